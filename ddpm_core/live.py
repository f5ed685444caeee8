"""The live generation panel: a chapter cell that, in the rendered book, runs the reverse process in the
reader's browser.

The panel itself is static JavaScript under ``book/_static/live/`` (``panel.js``, ``worker.js`` and
``sampler.js``) with the exported network (``model.onnx`` and ``model.json``, from
``python -m ddpm_core export``) and x_T of seeds 0-31 (``seeds.json``); ``make book`` adds
onnxruntime-web beside it. This module only writes the placeholder that ``panel.js`` turns into the
panel. A kernel cannot load the page's static files, so in Jupyter the placeholder stays a note
that points to the rendered book.
"""

from __future__ import annotations

from html import escape

PANEL_SCRIPT = "../_static/live/panel.js"  # relative to a chapter's page, book/NN_name.html


class LivePanel:
    """The panel's placeholder; displayed by Jupyter and by the book through ``_repr_html_``."""

    def __init__(self, sampler: str = "ddpm") -> None:
        if sampler not in ("ddpm", "ddim"):
            raise ValueError(f"sampler must be 'ddpm' or 'ddim', got {sampler!r}.")
        self.sampler = sampler

    def _repr_html_(self) -> str:
        note = ("The live panel runs in the rendered book, not in a kernel: run <code>make book</code> and open "
                "this chapter from <code>_build/html</code> (served, for example, by "
                "<code>python -m http.server -d _build/html</code>).")
        return (f'<div class="ddpm-live" data-sampler="{escape(self.sampler)}"><p>{note}</p></div>\n'
                f'<script src="{PANEL_SCRIPT}"></script>')

    def __repr__(self) -> str:
        return f"LivePanel(sampler={self.sampler!r})"


def live_panel(sampler: str = "ddpm") -> LivePanel:
    """The live panel, with ``sampler`` ("ddpm" or "ddim") chosen when it opens."""
    return LivePanel(sampler)
