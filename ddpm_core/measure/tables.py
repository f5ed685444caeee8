"""The results of ``ddpm_core.measure.metrics.evaluate_samples`` as a plain-text table.

``format_metrics_table`` prints one row per set of samples (``python -m ddpm_core evaluate`` and
the chapters print the same table), or, when that is wider than the book's code column, one
column per set.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

TABLE_COLUMNS = (
    ("samples", "num_samples", "{:d}"),
    ("Frechet", "frechet_distance", "{:.2f}"),
    ("confident", "confident_fraction", "{:.3f}"),
    ("IS", "inception_score", "{:.2f}"),
    ("max/min", "class_ratio", "{:.2f}"),
    ("NN median", "train_nn_median", "{:.2f}"),
    ("NN min", "train_nn_min", "{:.2f}"),
    ("test NN median", "real_train_nn_median", "{:.2f}"),
)
TABLE_WIDTH = 88  # the characters a line of the book's code column holds


def format_metrics_table(rows: Mapping[str, Any] | Sequence[Mapping[str, Any]], width: int = TABLE_WIDTH) -> str:
    """A plain-text table of ``evaluate_samples`` results, one row per set of samples.

    ``rows`` is one result, a list of results (named by their "name" entry, else numbered), or a
    dict from row name to result. Missing metrics print as "-". "max/min" is the class ratio, NN columns
    are nearest-training-image distances in pixel space ([-1, 1] scale) and "test NN median" is the same
    for real held-out images. A table wider than ``width`` characters is printed turned, one column per set.
    """
    if isinstance(rows, Mapping) and rows and all(isinstance(v, Mapping) for v in rows.values()):
        named = [(str(name), row) for name, row in rows.items()]
    elif isinstance(rows, Mapping):
        named = [(str(rows.get("name", "samples")), rows)]
    else:
        named = [(str(row.get("name", i + 1)), row) for i, row in enumerate(rows)]
    cells = {name: [fmt.format(row[key]) if row.get(key) is not None else "-" for _, key, fmt in TABLE_COLUMNS]
             for name, row in named}
    titles = [title for title, _, _ in TABLE_COLUMNS]
    table = _render(["", *titles], [[name, *values] for name, values in cells.items()])
    if max(len(line) for line in table.splitlines()) <= width:
        return table
    return _render(["", *cells], [[title, *(values[i] for values in cells.values())] for i, title in enumerate(titles)])


def _render(header: list[str], body: list[list[str]]) -> str:
    """Columns padded to their widest cell: the first left-aligned, the others right-aligned."""
    widths = [max(len(line[i]) for line in [header, *body]) for i in range(len(header))]

    def render(line: list[str]) -> str:
        cells = zip(line, widths, strict=True)
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(cells)).rstrip()

    return "\n".join([render(header), "  ".join("-" * w for w in widths), *(render(line) for line in body)])
