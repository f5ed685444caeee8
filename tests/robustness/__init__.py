"""What a careless or hostile user can do to the package: each case exits cleanly, loses nothing and never hangs."""
