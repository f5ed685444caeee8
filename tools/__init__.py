"""Tools for the people who work on the package: the mutation checks of `make mutants` and `make mutation-score`."""
