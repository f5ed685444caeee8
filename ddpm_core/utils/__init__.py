"""Small utilities that every layer shares.

    errors        the exceptions the package raises, with their exit codes
    files         atomic writes, output checks and guarded reads of JSON
    device        the compute device and the CPU's memory allocator
    progress      progress bars: live on a terminal, a few plain lines in a log
    images        8-bit grey levels from [-1, 1], image grids and PNG files
    arguments     the argument types of the command lines, each refusing a bad value clearly
    extras        the optional dependencies, checked before any work, and the command that installs them
    scripts       what the smaller command lines and scripts share: errors as one line, results files checked

May import nothing from ``ddpm_core``.
"""
