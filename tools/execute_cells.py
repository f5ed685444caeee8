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
from nbclient.exceptions import CellExecutionError

from ddpm_core.utils.arguments import file_path, non_negative_int, positive_int
from ddpm_core.utils.errors import DDPMError
from ddpm_core.utils.files import atomic_write
from ddpm_core.utils.scripts import run_script


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
    except CellExecutionError as error:
        raised = f"{error.ename}: {error.evalue}"[:300]
        raise DDPMError(f"A cell of {path} raised {raised}; nothing was stored, the chapter is as it was.") from None
    finally:
        if env_quick is not None:
            os.environ["DDPM_QUICK"] = env_quick
    for index, executed in zip(code, subset.cells, strict=True):
        if index in store:
            notebook.cells[index].outputs = merged_streams(executed.outputs)
            notebook.cells[index].execution_count = executed.execution_count
    atomic_write(path, lambda tmp: nbformat.write(notebook, tmp))  # a killed write leaves the chapter as it was


def read_notebook(path: Path) -> nbformat.NotebookNode:
    """The chapter at ``path``, refused in one line when it is not a notebook that can be read."""
    if path.suffix != ".ipynb" or not path.is_file():
        raise DDPMError(f"{path} is not a notebook file: pass a chapter such as book/01_forward_process.ipynb.")
    try:
        return nbformat.read(path, as_version=4)
    except Exception as error:  # JSON that is no notebook fails with whatever error nbformat's conversion meets
        raise DDPMError(f"Cannot read {path} as a notebook ({str(error)[:200]}).") from None


def main(argv: list[str] | None = None) -> int:
    return run_script(_run, argv)


def _run(argv: list[str] | None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tools.execute_cells", description=__doc__.splitlines()[0])
    parser.add_argument("notebook", type=file_path)
    parser.add_argument("cells", type=non_negative_int, nargs="*", help="indices of the cells to run, in order")
    parser.add_argument("--store", type=non_negative_int, nargs="*", default=None,
                        help="the cells whose outputs are written back (default: every cell run)")
    parser.add_argument("--all", action="store_true", help="run and store every cell")
    parser.add_argument("--timeout", type=positive_int, default=None, help="seconds per cell (default: none)")
    args = parser.parse_args(argv)
    notebook = read_notebook(args.notebook)
    cells = list(range(len(notebook.cells))) if args.all else args.cells
    store = cells if args.store is None or args.all else args.store
    if not cells:
        parser.error("name the cells to run, such as 2 5, or pass --all")
    beyond = sorted({i for i in [*cells, *store] if i >= len(notebook.cells)})
    if beyond:
        parser.error(f"{args.notebook} has {len(notebook.cells)} cells, numbered from 0: there is no cell {beyond}")
    if not set(store) <= set(cells):
        parser.error(f"--store names cells that are not run: {sorted(set(store) - set(cells))}")
    execute_cells(args.notebook, cells, store, args.timeout)
    print(f"{args.notebook}: ran cells {cells}, stored {store}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
