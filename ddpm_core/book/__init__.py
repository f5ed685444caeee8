"""The book's helpers: what the chapters call to show, check and draw.

    chapter       a chapter's set-up, quick mode, source listings and checked claims
    viz           image grids and the frames of a trajectory
    slider        timestep sliders over a trajectory (static HTML, or live widgets)
    diagram       the drawing of the UNet's architecture
    sample_sets   the sample sets the chapters measure, stored as 8-bit arrays
    bugs          the gallery of classic DDPM bugs, each a one-line edit of the package

May import every layer below it: ``measure``, ``training``, ``diffusion``, ``utils``; never ``app``.
"""
