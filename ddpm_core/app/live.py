"""The live generation panel: a chapter cell that, in the rendered book, runs the reverse process in the
reader's browser.

The panel itself is static JavaScript under ``book/_static/live/`` (``panel.js``, ``worker.js`` and
``sampler.js``) with the exported network (``model.onnx`` and ``model.json``, from
``python -m ddpm_core export``) and x_T of seeds 0-31 (``seeds.json``); ``make book`` adds
onnxruntime-web beside it. This module writes the placeholder that ``panel.js`` turns into the
panel (a kernel cannot load the page's static files, so in Jupyter the placeholder stays a note
that points to the rendered book), and ``write_file_mode``: a page opened from disk may neither
fetch files nor start a worker from a file: URL, so ``make book`` also packs everything the panel
fetches into one script, ``_static/ort/file-mode.js``, which such a page may load.
"""

from __future__ import annotations

import base64
import json
import sys
from html import escape
from pathlib import Path

from ddpm_core.utils.files import write_bytes

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


ORT_FILES = ("ort.wasm.min.js", "ort-wasm-simd-threaded.mjs", "ort-wasm-simd-threaded.wasm")


def write_file_mode(static: str | Path) -> Path:
    """Pack onnxruntime-web (from ``static/ort``) and the panel's files (``static/live``) into
    ``static/ort/file-mode.js``, which sets ``window.DDPM_LIVE_FILE``; returns its path."""
    static = Path(static)
    ort, live = static / "ort", static / "live"
    missing = [str(ort / name) for name in ORT_FILES if not (ort / name).is_file()]
    if missing:
        raise FileNotFoundError(f"onnxruntime-web is not in {ort} (missing {', '.join(missing)}): run make book.")

    def encoded(path: Path) -> str:
        return base64.b64encode(path.read_bytes()).decode("ascii")

    record = {
        "ort": (ort / "ort.wasm.min.js").read_text(encoding="utf-8"),
        "mjs": (ort / "ort-wasm-simd-threaded.mjs").read_text(encoding="utf-8"),
        "wasm": encoded(ort / "ort-wasm-simd-threaded.wasm"),
        "sampler": (live / "sampler.js").read_text(encoding="utf-8"),
        "worker": (live / "worker.js").read_text(encoding="utf-8"),
        "model": encoded(live / "model.onnx"),
        "meta": json.loads((live / "model.json").read_text(encoding="utf-8")),
        "seeds": json.loads((live / "seeds.json").read_text(encoding="utf-8")),
    }
    out = ort / "file-mode.js"
    write_bytes(out, ("window.DDPM_LIVE_FILE = " + json.dumps(record) + ";\n").encode("utf-8"))
    return out


def install_runtime(static: str | Path, dist: str | Path) -> list[Path]:
    """Copy the files of onnxruntime-web that the panel loads (``ORT_FILES``) from the npm package's ``dist``
    folder into ``static/ort``; returns their new paths."""
    import shutil

    target = Path(static) / "ort"
    target.mkdir(parents=True, exist_ok=True)
    missing = [name for name in ORT_FILES if not (Path(dist) / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{dist} lacks {', '.join(missing)}: run `npm ci` in the repository first.")
    return [Path(shutil.copy2(Path(dist) / name, target / name)) for name in ORT_FILES]


if __name__ == "__main__":  # python -m ddpm_core.app.live _build/html/_static [ORT_DIST] (make book does this)
    import argparse

    from ddpm_core.utils.arguments import folder
    from ddpm_core.utils.errors import DDPMError
    from ddpm_core.utils.scripts import run_script

    def _pack(argv: list[str] | None) -> int:
        parser = argparse.ArgumentParser(prog="python -m ddpm_core.app.live",
                                         description="Pack the live panel for pages opened from disk.")
        parser.add_argument("static", type=folder, metavar="STATIC_DIR", help="the built book's _static folder")
        parser.add_argument("dist", type=folder, nargs="?", metavar="ORT_DIST",
                            help="onnxruntime-web's dist folder, to copy the runtime from")
        args = parser.parse_args(argv)
        for given, what in ((args.static, "STATIC_DIR"), (args.dist, "ORT_DIST")):
            if given is not None and not given.is_dir():
                raise DDPMError(f"{what} {given} is not a folder: pass the built book's _static folder and "
                                f"onnxruntime-web's dist folder, as make book does (run make book).")
        try:
            if args.dist is not None:
                install_runtime(args.static, args.dist)
            print(f"wrote {write_file_mode(args.static)} for pages opened from disk")
        except (OSError, ValueError) as error:  # a missing or unreadable file of the panel, or bad JSON in one
            raise DDPMError(f"Cannot pack the live panel from {args.static}: {error}") from None
        return 0

    sys.exit(run_script(_pack))
