"""Small utilities that every layer shares.

    errors        the exceptions the package raises, with their exit codes
    files         atomic writes, output checks and guarded reads of JSON
    device        the compute device and the CPU's memory allocator
    progress      progress bars that stay quiet when asked

May import nothing from ``ddpm_core``.
"""
