"""The book's pages that are not chapters: the first page's results table and the notation page.

- The results table that ``book/intro.md`` includes is exactly what ``tools/results_table.py`` writes from the
  stored results today, so it cannot go stale when a chapter, a checkpoint or ``RESULTS.md`` changes.
- Every link of ``book/notation.md`` leads to a page of the book, and every section it names (``page#anchor``)
  is a heading of that page, with the anchor MyST gives that heading.
- The new pages are in the table of contents, after the chapters and before the bibliography.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
import yaml
from markdown_it import MarkdownIt
from mdit_py_plugins.amsmath import amsmath_plugin
from mdit_py_plugins.colon_fence import colon_fence_plugin
from mdit_py_plugins.dollarmath import dollarmath_plugin
from myst_parser.mdit_to_docutils.base import default_slugify

from tools import results_table

REPO = Path(__file__).resolve().parents[1]
BOOK = REPO / "book"
NOTATION = BOOK / "notation.md"
LINK = re.compile(r"\]\((?P<target>[^)\s]+)\)")
ANCHOR_LEVELS = 3  # myst_heading_anchors in _config.yml


def heading_anchors(markdown_cells: list[str]) -> list[str]:
    """The anchors MyST gives a page's headings (levels 1 to 3): the text of the heading without its maths,
    slugified as GitHub does, with -1, -2, ... appended to repeats, in the order of the page."""
    parser = MarkdownIt("commonmark").use(dollarmath_plugin).use(amsmath_plugin).use(colon_fence_plugin)
    anchors: list[str] = []
    for source in markdown_cells:
        tokens = parser.parse(source)
        for token, inline in zip(tokens, tokens[1:], strict=False):
            if token.type != "heading_open" or int(token.tag[1:]) > ANCHOR_LEVELS:
                continue
            title = "".join(child.content for child in inline.children or []
                            if child.type in ("text", "code_inline"))
            anchor = base = default_slugify(title)
            repeat = 1
            while anchor in anchors:
                anchor, repeat = f"{base}-{repeat}", repeat + 1
            anchors.append(anchor)
    return anchors


def page_markdown(path: Path) -> list[str]:
    if path.suffix == ".ipynb":
        notebook = json.loads(path.read_text(encoding="utf-8"))
        return ["".join(cell["source"]) for cell in notebook["cells"] if cell["cell_type"] == "markdown"]
    return [path.read_text(encoding="utf-8")]


def test_results_table_is_what_the_script_writes_today():
    committed = results_table.OUTPUT.read_text(encoding="utf-8")
    assert committed == results_table.render(), (
        "book/_generated/results_table.md is stale: run python -m tools.results_table and commit it")


def test_the_appendix_gives_the_one_measured_training_time():
    committed = results_table.TRAINING_OUTPUT.read_text(encoding="utf-8")
    assert committed == results_table.training_sentence(), (
        "book/_generated/training_time.md is stale: run python -m tools.results_table and commit it")
    appendix = (BOOK / "appendix_numbers.md").read_text(encoding="utf-8")
    included = results_table.TRAINING_OUTPUT.relative_to(BOOK).as_posix()
    assert re.search(r"```\{include\}\s+" + re.escape(included), appendix)
    minutes = json.loads(results_table.TRAINING_TIME.read_text())["estimated_minutes"]
    readme = (REPO / "README.md").read_text(encoding="utf-8")
    assert f"about {results_table.rounded(minutes, '1')} minutes" in readme, "the README quotes another time"


def test_intro_includes_the_results_table():
    intro = (BOOK / "intro.md").read_text(encoding="utf-8")
    included = results_table.OUTPUT.relative_to(BOOK).as_posix()
    assert re.search(r"```\{include\}\s+" + re.escape(included), intro)


def notation_links() -> list[str]:
    return [m["target"] for m in LINK.finditer(NOTATION.read_text(encoding="utf-8"))
            if "://" not in m["target"]]


def test_notation_page_has_links():
    assert len(notation_links()) >= 20


@pytest.mark.parametrize("target", sorted(set(notation_links())))
def test_notation_link_resolves(target: str):
    page, _, anchor = target.partition("#")
    path = BOOK / page
    assert path.is_file(), f"notation.md links to {page}, which does not exist"
    if anchor:
        anchors = heading_anchors(page_markdown(path))
        assert anchor in anchors, f"{page} has no heading with the anchor #{anchor}; its anchors: {anchors}"


def test_new_pages_sit_between_the_chapters_and_the_bibliography():
    toc = yaml.safe_load((REPO / "_toc.yml").read_text(encoding="utf-8"))
    files = [entry["file"] for entry in toc["chapters"]]
    notation, appendix, bibliography = (files.index(f"book/{name}")
                                        for name in ("notation", "appendix_numbers", "bibliography"))
    chapters = [i for i, name in enumerate(files) if re.match(r"book/\d\d_", name)]
    assert max(chapters) < notation < bibliography and max(chapters) < appendix < bibliography


def test_anchor_slugs_follow_myst():
    # the rule the links above rely on: maths is left out of a heading's anchor
    assert heading_anchors(["## The closed form $q(x_t \\mid x_0)$\n\n## Summary\n\n## Summary\n"]) == [
        "the-closed-form-", "summary", "summary-1"]


def test_the_readme_table_of_chapter_times_is_written_from_the_results_and_checked():
    from tools import chapter_times

    results = {"machine": "a CPU, 2 threads", "measured_on": "2026-12-02",
               "chapters": {"01_forward_process": {"seconds": 75.0, "finished": True},
                            "06_quality": {"seconds": 900.0, "finished": False}}}
    readme = "# Book\n\n" + chapter_times.ANCHOR + "\n## Layout\n"
    once = chapter_times.readme_with(readme, chapter_times.table(results))
    twice = chapter_times.readme_with(once, chapter_times.table(results))
    assert once == twice  # the block is replaced, not added again
    assert once.index(chapter_times.ANCHOR) < once.index("| `01_forward_process` | 1.2 min |") < once.index("## Layout")
    assert "| `06_quality` | stopped after 15 min |" in once
    assert chapter_times.main(["--check"]) == 0  # the README shows what is stored
