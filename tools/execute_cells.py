"""Re-execute chosen cells of a chapter in full mode and store their new outputs; every other cell keeps its own.

For a change that reaches only a few cells of a chapter whose full run takes long (a listing of a function that
changed, a cheap check), this runs just those cells, in one kernel, in their order, from the chapter's folder,
and writes their outputs back. Cells that only prepare others (imports, settings) can be run without storing::

    python -m tools.execute_cells book/01_forward_process.ipynb 2 5 --store 5
    python -m tools.execute_cells book/02_reverse_process.ipynb --all

``--all`` runs the whole chapter (as ``make execute`` does for every chapter). Quick mode is switched off.
"""

from __future__ import annotations

import argparse
import copy
import os
from pathlib import Path

import nbformat
from nbclient import NotebookClient


def merged_streams(outputs: list) -> list:
    """The outputs with each run of consecutive prints to the same stream joined into one, as Jupyter shows them
    (a kernel may send one print in several messages, which the book would draw as separate boxes)."""
    merged: list = []
    for output in outputs:
        previous = merged[-1] if merged else None
        if (output.get("output_type") == "stream" and previous is not None
                and previous.get("output_type") == "stream" and previous.get("name") == output.get("name")):
            previous["text"] = previous["text"] + output["text"]
        else:
            merged.append(copy.deepcopy(output))
    return merged


def execute_cells(path: Path, cells: list[int], store: list[int], timeout: int | None = None) -> None:
    notebook = nbformat.read(path, as_version=4)
    code = [i for i in cells if notebook.cells[i].cell_type == "code"]
    subset = copy.copy(notebook)
    subset.cells = [copy.deepcopy(notebook.cells[i]) for i in code]
    env_quick = os.environ.pop("DDPM_QUICK", None)
    try:
        NotebookClient(subset, timeout=timeout, kernel_name="python3",
                       resources={"metadata": {"path": str(path.parent)}}).execute()
    finally:
        if env_quick is not None:
            os.environ["DDPM_QUICK"] = env_quick
    for index, executed in zip(code, subset.cells, strict=True):
        if index in store:
            notebook.cells[index].outputs = merged_streams(executed.outputs)
            notebook.cells[index].execution_count = executed.execution_count
    nbformat.write(notebook, path)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=Path)
    parser.add_argument("cells", type=int, nargs="*", help="indices of the cells to run, in order")
    parser.add_argument("--store", type=int, nargs="*", default=None,
                        help="the cells whose outputs are written back (default: every cell run)")
    parser.add_argument("--all", action="store_true", help="run and store every cell")
    parser.add_argument("--timeout", type=int, default=None, help="seconds per cell (default: none)")
    args = parser.parse_args()
    notebook = nbformat.read(args.notebook, as_version=4)
    cells = list(range(len(notebook.cells))) if args.all else args.cells
    store = cells if args.store is None or args.all else args.store
    execute_cells(args.notebook, cells, store, args.timeout)
    print(f"{args.notebook}: ran cells {cells}, stored {store}")


if __name__ == "__main__":
    main()
