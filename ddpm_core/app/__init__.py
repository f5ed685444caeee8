"""The command line and the export: what a user runs, python -m ddpm_core ...

    cli               the command line's parser and dispatch
    train_command     python -m ddpm_core train: a training run, with a checkpoint after every epoch
    unet_options      the architecture flags of train: one entry per field of UNetConfig that has a flag
    flags             the flags several commands share: checkpoint, device, the sampler and its options
    sample_command    python -m ddpm_core sample: digits from a checkpoint, as a PNG grid or a .npy array
    evaluate_command  python -m ddpm_core evaluate: sample, then print the quality metrics
    export_command    python -m ddpm_core export: the ONNX export, from the command line
    export            eps_theta to ONNX, checked against PyTorch, for the live panel
    live              the placeholder and runtime files of the book's in-browser panel

May import every layer below it: ``measure``, ``training``, ``diffusion``, ``utils``; never ``book``.
"""
