"""The book's promises that need no kernel, checked on the stored notebooks.

- Every listing a chapter shows with ``show_source(X)`` is today's source of X: the stored output
  equals what ``show_source(X)`` gives now. Editing a listed function without re-executing its
  chapter (``make execute``) fails here.
- Every code cell fits the page: no line longer than 88 characters.
- Every listing is also checked under nbval (``nbval-check-output``), and every chapter states claims
  with ``check(...)`` whose stored outputs show them kept; the sanitiser masks only what varies.
- No stored output or notebook metadata carries widget state, so no page needs a widget manager.
- Every chapter's Colab cell clones the address that ``_config.yml`` sets for the launch buttons.
"""

from __future__ import annotations

import ast
import json
import os
import re
from pathlib import Path

import pytest

from ddpm_core.book.chapter import colab_cell, repository_url, show_source

REPO = Path(__file__).resolve().parents[1]
NOTEBOOKS = sorted((REPO / "book").glob("*.ipynb"))
MAX_LINE = 88
CALL = re.compile(r"^show_source\((?P<target>[A-Za-z_][\w.]*)\)\s*$")
WIDGET_MIME = "application/vnd.jupyter.widget-view+json"


def load(path: Path) -> dict:
    return json.loads(path.read_text(encoding="utf-8"))


def code_cells(notebook: dict) -> list[dict]:
    return [cell for cell in notebook["cells"] if cell["cell_type"] == "code"]


def text(value: str | list[str]) -> str:
    return value if isinstance(value, str) else "".join(value)


def package_namespace(notebook: dict) -> dict:
    """The names a chapter imports from ``ddpm_core``, imported here without running the chapter."""
    namespace: dict = {}
    for cell in code_cells(notebook):
        try:
            tree = ast.parse(text(cell["source"]))
        except SyntaxError:  # IPython magics; no package imports there
            continue
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("ddpm_core"):
                exec(compile(ast.Module(body=[node], type_ignores=[]), "<chapter imports>", "exec"), namespace)
    return namespace


def listings() -> list[tuple[str, int, str]]:
    found = []
    for path in NOTEBOOKS:
        for index, cell in enumerate(load(path)["cells"]):
            source = text(cell["source"]).strip()
            if cell["cell_type"] == "code" and "show_source(" in source:
                found.append((path.name, index, source))
    return found


def resolve(namespace: dict, target: str) -> object:
    head, *rest = target.split(".")
    obj = namespace[head]
    for name in rest:
        obj = getattr(obj, name)
    return obj


def test_the_book_lists_package_code():
    assert len(listings()) >= 10


@pytest.mark.parametrize(("name", "index", "source"), listings(), ids=lambda v: str(v).split("\n")[0])
def test_stored_listing_is_todays_source(name, index, source):
    from IPython.core.formatters import format_display_data

    match = CALL.match(source)
    assert match, f"{name}, cell {index}: a listing cell holds one call show_source(NAME), not {source!r}"
    notebook = load(REPO / "book" / name)
    target = resolve(package_namespace(notebook), match["target"])
    expected = format_display_data(show_source(target))[0]
    results = [o for o in notebook["cells"][index].get("outputs", []) if o["output_type"] == "execute_result"]
    assert results, f"{name}, cell {index}: show_source({match['target']}) has no stored output; run `make execute`"
    stored = results[0]["data"]
    for mime in ("text/plain", "text/html"):
        assert text(stored.get(mime, "")) == expected[mime], (
            f"{name}, cell {index}: the stored listing of {match['target']} ({mime}) is not today's source. "
            f"Re-execute the chapter (`make execute`) so that the book shows the code as it is."
        )


# A listing a reader reads line by line stays short, docstring included: what one screen shows, and what the
# algorithms of chapter 2 need beside Ho et al.'s pseudocode.
LISTING_LINES = 30
ALGORITHM_LINES = {"train_step": 30, "sample": 30}  # Algorithm 1 and Algorithm 2 of Ho et al. 2020


@pytest.mark.parametrize(("name", "index", "source"), listings(), ids=lambda v: str(v).split("\n")[0])
def test_every_listing_is_short_enough_to_read(name, index, source):
    import inspect

    match = CALL.match(source)
    target = match["target"]
    obj = resolve(package_namespace(load(REPO / "book" / name)), target)
    lines = len(inspect.getsource(obj).splitlines())
    limit = ALGORITHM_LINES.get(target, LISTING_LINES)
    assert lines <= limit, (
        f"{name}, cell {index}: the listing of {target} is {lines} lines long, more than the {limit} a reader can "
        f"follow; move what is not the idea itself into a function of its own."
    )


@pytest.mark.parametrize(("name", "index", "source"), listings(), ids=lambda v: str(v).split("\n")[0])
def test_every_listing_fits_the_page(name, index, source):
    """A listing is the package's source, which may run to 120 columns elsewhere; the page holds 88."""
    import inspect

    target = CALL.match(source)["target"]
    obj = resolve(package_namespace(load(REPO / "book" / name)), target)
    lines, first = inspect.getsourcelines(obj)
    where = os.path.relpath(inspect.getsourcefile(inspect.unwrap(obj)), REPO)
    long_lines = [
        f"{where}:{first + number} ({len(line)} characters): {line.strip()[:60]}"
        for number, line in enumerate(line.rstrip("\n") for line in lines)
        if len(line) > MAX_LINE
    ]
    assert not long_lines, (
        f"{name}, cell {index}: the listing of {target} has lines over {MAX_LINE} characters, "
        f"wider than the page; break them (one argument a line, a named intermediate): {long_lines}"
    )


def test_chapter_2_lists_both_algorithms():
    targets = {CALL.match(source)["target"] for name, _, source in listings() if name.startswith("02_")}
    assert set(ALGORITHM_LINES) <= targets


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_code_cells_fit_the_page(path):
    long_lines = [
        f"cell {index}, line {number}: {len(line)} characters"
        for index, cell in enumerate(load(path)["cells"])
        if cell["cell_type"] == "code"
        for number, line in enumerate(text(cell["source"]).splitlines(), start=1)
        if len(line) > MAX_LINE
    ]
    assert not long_lines, f"{path.name} has code lines over {MAX_LINE} characters: {long_lines}"


MAX_CELL_LINES = 30  # what a reader takes in at once


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_code_cell_is_short_enough_to_read(path):
    too_long = [
        f"cell {index}: {lines} lines"
        for index, cell in enumerate(load(path)["cells"])
        if cell["cell_type"] == "code"
        for lines in [len(text(cell["source"]).rstrip("\n").splitlines())]
        if lines > MAX_CELL_LINES
    ]
    assert not too_long, f"{path.name} has code cells over {MAX_CELL_LINES} lines: {too_long}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_no_widget_state_is_stored(path):
    notebook = load(path)
    assert "widgets" not in notebook["metadata"], f"{path.name} stores widget state in its metadata"
    widgets = [
        index
        for index, cell in enumerate(code_cells(notebook))
        for output in cell.get("outputs", [])
        if WIDGET_MIME in output.get("data", {})
    ]
    assert not widgets, f"{path.name} stores widget outputs (progress bars?) in code cells {widgets}"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_colab_cell_clones_the_configured_repository(path):
    first = code_cells(load(path))[0]
    expected = colab_cell(repository_url(REPO / "_config.yml"))
    assert text(first["source"]) == expected, (
        f"{path.name}: the Colab cell does not match repository.url of _config.yml; run "
        f"`python -c 'from ddpm_core.book.chapter import write_colab_cells; write_colab_cells(\".\")'`"
    )


def test_chapter_setup_gives_the_committed_checkpoints_and_the_measurements_size(monkeypatch):
    import matplotlib.pyplot as plt

    from ddpm_core.book.chapter import chapter_setup

    monkeypatch.delenv("DDPM_QUICK", raising=False)
    chapter = chapter_setup(dpi=90)
    assert plt.rcParams["figure.dpi"] == 90
    for path in (chapter.model, chapter.reference_model, chapter.conditional_model):
        assert path.is_file() and path.parent == chapter.repo / "book" / "checkpoints"
    assert not chapter.quick
    monkeypatch.setenv("DDPM_QUICK", "1")
    assert chapter_setup().quick


def test_a_claim_that_needs_the_books_sample_size_is_only_listed_on_a_quick_run(monkeypatch, capsys):
    from ddpm_core.book.chapter import chapter_setup, check

    chapter_setup().full_size_claims("the distance is small")
    monkeypatch.setenv("DDPM_QUICK", "1")
    check(False, "the distance is small", "40.0")
    assert "not held on a quick run's few samples: the distance is small (40.0)" in capsys.readouterr().out
    with pytest.raises(AssertionError, match="another claim"):
        check(False, "another claim", "1.0")  # not named: held even on a quick run
    monkeypatch.delenv("DDPM_QUICK")
    with pytest.raises(AssertionError, match="the distance is small"):
        check(False, "the distance is small", "40.0")


def test_no_visible_cell_shows_a_test_switch():
    for path in NOTEBOOKS:
        for cell in code_cells(load(path)):
            hidden = {"remove-cell", "remove-input"} & set(cell["metadata"].get("tags", []))
            source = text(cell["source"])
            if not hidden:
                for switch in ("chapter.quick", ".pick(", "needs_full_size", "full_size_claims", "DDPM_QUICK"):
                    assert switch not in source, f"{path.name}: a visible code cell shows {switch!r}: {source[:80]!r}"


def claims_of(source: str, function: str, position: int) -> list[str]:
    """The string literals passed as argument ``position`` (None: every argument) of calls to ``function``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        name = getattr(node, "func", None)
        name = getattr(name, "id", None) or getattr(name, "attr", None)
        if isinstance(node, ast.Call) and name == function:
            args = node.args if position is None else node.args[position:position + 1]
            found += [arg.value for arg in args if isinstance(arg, ast.Constant)]
    return found


def test_every_claim_named_for_full_size_is_a_claim_its_chapter_checks():
    for path in NOTEBOOKS:
        sources = [text(cell["source"]) for cell in code_cells(load(path))]
        named = {claim for source in sources for claim in claims_of(source, "full_size_claims", None)}
        checked = {claim for source in sources for claim in claims_of(source, "check", 1)}
        assert named <= checked, f"{path.name}: full_size_claims names {named - checked}, which no check makes"



def test_output_dir_is_a_scratch_folder_in_quick_mode(tmp_path, monkeypatch):
    from ddpm_core.book.chapter import output_dir

    monkeypatch.setenv("DDPM_QUICK", "1")
    monkeypatch.setenv("DDPM_SCRATCH", str(tmp_path / "scratch"))
    assert output_dir(REPO / "book" / "checkpoints") == tmp_path / "scratch" / "checkpoints"
    monkeypatch.setenv("DDPM_QUICK", "0")
    assert output_dir(tmp_path / "full") == tmp_path / "full"
    assert (tmp_path / "full").is_dir()


def test_correlation_of_images_with_themselves_and_their_negatives():
    import torch

    from ddpm_core.book.chapter import correlation

    images = torch.rand(5, 1, 28, 28)
    assert correlation(images, images) == pytest.approx(1.0, abs=1e-6)
    assert correlation(images, -images) == pytest.approx(-1.0, abs=1e-6)
    assert correlation(images, 3 * images + 1) == pytest.approx(1.0, abs=1e-6)


def built_pages() -> list[Path]:
    root = REPO / "_build" / "html"
    pages = sorted(root.rglob("*.html")) if (root / "book").is_dir() else []
    if not pages:
        if os.environ.get("DDPM_REQUIRE_BOOK") == "1":
            pytest.fail("the book is not built but DDPM_REQUIRE_BOOK=1 requires it: run make book")
        pytest.skip("the book is not built (make book)")
    return [p for p in pages if "_static" not in p.parts]


def test_built_pages_load_nothing_from_other_hosts():
    """Scripts, stylesheets and images come from the book itself, MathJax included, so a downloaded copy
    of the HTML reads offline (links that a reader clicks, such as the launch buttons, may leave it)."""
    loads = re.compile(
        r'<(?:script|img|iframe)\b[^>]*\bsrc="([^"]+)"|<link\b[^>]*\brel="stylesheet"[^>]*\bhref="([^"]+)"'
    )
    outside = {}
    for page in built_pages():
        urls = [a or b for a, b in loads.findall(page.read_text(encoding="utf-8"))]
        external = [u for u in urls if re.match(r"(https?:)?//", u)]
        if external:
            outside[page.name] = external
    assert outside == {}
    mathjax = REPO / "_build" / "html" / "_static" / "mathjax" / "tex-chtml.js"
    assert mathjax.is_file(), "MathJax is not served from the book's _static folder"


def test_check_prints_a_kept_claim_and_raises_on_a_broken_one(capsys):
    from ddpm_core.book.chapter import check

    check(True, "the chain agrees", "error 0.01")
    assert capsys.readouterr().out == "✓ the chain agrees (error 0.01)\n"
    with pytest.raises(AssertionError, match="✗ the chain agrees: the numbers above no longer support this claim"):
        check(False, "the chain agrees")
    check(True, "a claim long enough to need a second line on the page", "with a detail " * 4)
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 2 and max(map(len, lines)) <= 88 and lines[1].startswith("  with")


CHECKED = "nbval-check-output"


@pytest.mark.parametrize(("name", "index", "source"), listings(), ids=lambda v: str(v).split("\n")[0])
def test_every_listing_is_compared_by_nbval(name, index, source):
    tags = load(REPO / "book" / name)["cells"][index]["metadata"].get("tags", [])
    assert CHECKED in tags, f"{name}, cell {index}: tag the listing {CHECKED!r} so that make nbtest compares it"


FEWER_CLAIMS = {"11_scale.ipynb": 1}  # the appendix on scale makes one claim of its own


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_chapter_checks_its_claims_and_stores_them_kept(path):
    notebook = load(path)
    calls = sum(text(cell["source"]).count("check(") for cell in code_cells(notebook))
    outputs = "".join(
        text(output.get("text", "")) for cell in code_cells(notebook) for output in cell.get("outputs", [])
    )
    assert calls >= FEWER_CLAIMS.get(path.name, 3), f"{path.name} checks {calls} claims with check(...)"
    assert "\u2713 " in outputs, f"{path.name}: no stored output shows a kept claim; run the chapter"
    assert "\u2717 " not in outputs, f"{path.name}: a stored output shows a broken claim"


def test_the_sanitiser_masks_times_machines_and_temporary_paths():
    import configparser

    config = configparser.ConfigParser()
    config.read(REPO / "book" / "nbval_sanitize.cfg")
    rules = [(re.compile(section["regex"]), section["replace"]) for section in config.values() if "regex" in section]

    def clean(line: str) -> str:
        for pattern, replacement in rules:
            line = pattern.sub(replacement, line)
        return line

    assert clean("trained 1 epochs on AMD EPYC, 1 threads x 2 processes (DDP) in 6 s") == clean(
        "trained 1 epochs on Intel(R) Xeon(R) Processor, 2 threads in 12.5 s"
    )
    assert clean("checkpoint: /tmp/ddpm-scale-uetj2_jk/ddp/model.safetensors") == "checkpoint: <tmp>"
    assert clean("72.0 min of training") == "<time> of training"
    # numbers that are results, not timings, stay
    assert clean("324,705 parameters, 11 labels x 64 = 704") == "324,705 parameters, 11 labels x 64 = 704"
    assert clean("share dropped to 'no class': 0.0997") == "share dropped to 'no class': 0.0997"


@pytest.mark.parametrize("path", NOTEBOOKS, ids=lambda p: p.name)
def test_every_cell_has_its_own_id(path):
    notebook = load(path)
    ids = [cell.get("id") for cell in notebook["cells"]]
    assert (notebook["nbformat"], notebook["nbformat_minor"]) >= (4, 5), f"{path.name}: nbformat 4.5 gives cells ids"
    assert None not in ids and len(set(ids)) == len(ids), f"{path.name}: a cell without an id, or two with one id"
