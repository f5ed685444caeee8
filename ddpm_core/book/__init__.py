"""The book's helpers: what the chapters call to show, check and draw.

    chapter          a chapter's set-up, quick mode, source listings and checked claims
    viz              image grids and the frames of a trajectory
    slider           timestep sliders over a trajectory (static HTML, or live widgets)
    diagram          the drawing of the UNet's architecture
    sample_sets      the sample sets the chapters measure, stored as 8-bit arrays
    sample_files     a sample set's .npz file: written, and read back only after it is checked
    sample_sets_cli  python -m ddpm_core.book.sample_sets_cli: list the sets, generate chosen ones
    bugs             the gallery of classic DDPM bugs, each a one-line edit of the package
    bugs_cli         python -m ddpm_core.book.bugs_cli: list the bugs, train the short runs of the training bugs
    checkout         whether the package runs from a checkout of the repository, which those commands need

May import every layer below it: ``measure``, ``training``, ``diffusion``, ``utils``; never ``app``.
"""
