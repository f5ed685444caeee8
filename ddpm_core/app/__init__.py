"""The command line and the export: what a user runs, python -m ddpm_core ...

    cli           the command line: train, sample, evaluate, export
    arguments     the argument types of the command line, each with a clear error
    export        eps_theta to ONNX, checked against PyTorch, for the live panel
    live          the placeholder and runtime files of the book's in-browser panel

May import every layer below it: ``measure``, ``training``, ``diffusion``, ``utils``; never ``book``.
"""
