"""Every page of the built book fits its column, at two common laptop sizes and on a phone.

The pages are those ``_toc.yml`` lists, read from ``_build/html`` (or ``$DDPM_BOOK_SITE``); if the
book is not built the tests are skipped, unless ``$DDPM_REQUIRE_BOOK=1`` demands it. One Chromium
session opens each page once, opens every collapsed cell and solution, waits for MathJax, and
measures the page at each size:

- at 1280x800 and 1366x768, no code cell, printed output, table, image or display equation may be
  wider than its own box (``scrollWidth > clientWidth``: it would scroll or be cut) or reach past the
  article column, by more than 1 px;
- at 390x844 (a phone) the article may not overlap a sidebar or the header, and nothing may poke out
  of the page; code, outputs, tables and equations may scroll sideways inside their own box there.

A failure names the page, the kind of element, how many pixels it overflows by and the start of its
text (for maths, its TeX source).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.browser

REPO = Path(__file__).resolve().parents[1]
SITE_ENV = "DDPM_BOOK_SITE"
REQUIRE_BOOK_ENV = "DDPM_REQUIRE_BOOK"
LAPTOPS = [(1280, 800), (1366, 768)]
PHONE = (390, 844)
TOLERANCE_PX = 1


def toc_pages() -> list[str]:
    """The documents ``_toc.yml`` lists, in reading order (``book/intro``, ``book/01_forward_process``, ...)."""
    toc = yaml.safe_load((REPO / "_toc.yml").read_text(encoding="utf-8"))
    pages: list[str] = []

    def walk(entries: list[dict]) -> None:
        for entry in entries:
            if "file" in entry:
                pages.append(str(Path(entry["file"]).with_suffix("")))
            for key in ("chapters", "sections", "parts"):
                walk(entry.get(key, []))

    pages.append(str(Path(toc["root"]).with_suffix("")))
    walk(toc.get("chapters", []) + toc.get("parts", []))
    return pages


PAGES = toc_pages()

# Opens what a reader can open (hidden cells, collapsed outputs, exercise solutions), so that it is measured too,
# and turns off the theme's transitions, so that a sidebar is where it ends up as soon as the window is resized.
OPEN_EVERYTHING = """
const still = document.createElement('style');
still.textContent = '*, *::before, *::after { transition: none !important; animation: none !important; }';
document.head.appendChild(still);
document.querySelectorAll('details').forEach(d => { d.open = true; });
document.querySelectorAll('.toggle-hidden').forEach(e => e.classList.remove('toggle-hidden'));
"""

# Resolves (through the async callback) once MathJax, where the page loads it, has typeset the page and every
# image has loaded.
WAIT_FOR_PAGE = """
const done = arguments[arguments.length - 1];
const started = Date.now();
(function poll() {
  const mj = window.MathJax;
  const images = Array.from(document.images).every(img => img.complete);
  const maths = document.querySelector('script[src*="mathjax"]') !== null;  // pages without maths load none
  if (images && !maths) {
    done('typeset');
  } else if (mj && mj.startup && mj.startup.promise && images) {
    mj.startup.promise.then(() => done('typeset'), e => done('MathJax failed: ' + e));
  } else if (Date.now() - started > 20000) {
    done(mj && mj.startup ? 'images did not load' : 'MathJax did not start');
  } else {
    setTimeout(poll, 50);
  }
})();
"""

# What is measured, in this order: an element is counted once, under the first kind whose selector matches it.
# A block must fit its own box and the column; inline code and maths, whose boxes hug their text, only the column.
KINDS = [
    ("output", "div.cell_output pre, div.cell_output table, div.cell_output img, div.cell_output .output", True),
    ("code", "div.cell_input pre, .highlight pre", True),
    ("table", "article table", True),
    ("image", "article img", True),
    ("maths", 'mjx-container[display="true"]', True),
    ("inline code", "article code", False),
    ("inline maths", "article mjx-container", False),
]

# Returns, for the page as laid out now, the column and each measured element that overflows.
MEASURE = """
const kinds = arguments[0], tolerance = arguments[1];
const article = document.querySelector('article.bd-article') || document.querySelector('main') || document.body;
const articleBox = article.getBoundingClientRect();
const style = getComputedStyle(article);
const column = {left: articleBox.left + parseFloat(style.paddingLeft),
                right: articleBox.right - parseFloat(style.paddingRight)};
function snippet(element, kind) {
  if (kind.endsWith('maths') && window.MathJax && MathJax.startup && MathJax.startup.document) {
    const items = MathJax.startup.document.getMathItemsWithin(element);
    if (items.length) return items[0].math;
  }
  if (element.tagName === 'IMG') return 'image ' + (element.getAttribute('alt') || element.src.slice(0, 40));
  return element.textContent;
}
function scroller(element) {  // the nearest box, the element's own included, that scrolls sideways
  for (let e = element; e && e !== article; e = e.parentElement) {
    const overflow = getComputedStyle(e).overflowX;
    if (overflow === 'auto' || overflow === 'scroll') return e;
  }
  return null;
}
const seen = new Set(), found = [];
for (const [kind, selector, block] of kinds) {
  for (const element of document.querySelectorAll(selector)) {
    if (seen.has(element)) continue;
    seen.add(element);
    const box = element.getBoundingClientRect();
    if (box.width === 0 && box.height === 0) continue;  // not displayed
    const inside = block ? element.scrollWidth - element.clientWidth : 0;
    const past = Math.max(box.right - column.right, column.left - box.left);
    const box_scroller = scroller(element);
    const scroller_past = box_scroller === null ? null
      : box_scroller.getBoundingClientRect().right - column.right;
    if (inside > tolerance || past > tolerance) {
      const text = snippet(element, kind).replace(/\\s+/g, ' ').trim();
      found.push({kind: kind, inside: Math.round(inside), past: Math.round(past),
                  scroller_past: scroller_past === null ? null : Math.round(scroller_past),
                  text: text.slice(0, 70)});
    }
  }
}
const page = document.documentElement.scrollWidth - document.documentElement.clientWidth;
return {column: [Math.round(column.left), Math.round(column.right)], page: page, found: found};
"""

# At a phone's width: the boxes of the visible sidebars and header that the article's box overlaps.
OVERLAPS = """
const article = document.querySelector('article.bd-article');
const a = article.getBoundingClientRect();
const overlaps = [];
for (const selector of ['.bd-sidebar-primary', '.bd-sidebar-secondary', '.bd-header', '.bd-header-article']) {
  for (const element of document.querySelectorAll(selector)) {
    const style = getComputedStyle(element);
    const b = element.getBoundingClientRect();
    if (style.display === 'none' || style.visibility === 'hidden' || b.width === 0 || b.height === 0) continue;
    if (element.contains(article) || article.contains(element)) continue;
    const x = Math.min(a.right, b.right) - Math.max(a.left, b.left);
    const y = Math.min(a.bottom, b.bottom) - Math.max(a.top, b.top);
    if (x > 1 && y > 1) overlaps.push(`${selector} (${Math.round(x)} x ${Math.round(y)} px)`);
  }
}
return overlaps;
"""


@pytest.fixture(scope="module")
def site() -> tuple[Path, list[str]]:
    """The built site and the pages of ``_toc.yml`` built there (a page added since the last build is left out)."""
    root = Path(os.environ.get(SITE_ENV, REPO / "_build" / "html"))
    built = [page for page in PAGES if (root / f"{page}.html").is_file()]
    missing = [page for page in PAGES if page not in built]
    if missing and os.environ.get(REQUIRE_BOOK_ENV) == "1":
        pytest.fail(f"{root} lacks {missing} but ${REQUIRE_BOOK_ENV}=1 requires the built book: run make book.")
    if not built:
        pytest.skip(f"the book is not built (make book): {root} holds none of the pages of _toc.yml")
    if missing:
        warnings.warn(f"not measured, as {root} does not hold them yet (make book): {missing}", stacklevel=1)
    return root, built


def _set_viewport(driver, width: int, height: int) -> None:
    driver.execute_cdp_cmd(
        "Emulation.setDeviceMetricsOverride",
        {"width": width, "height": height, "deviceScaleFactor": 1, "mobile": width < 600},
    )
    driver.execute_script("return document.body.offsetWidth;")  # lay the page out at the new size


@pytest.fixture(scope="module")
def measured(browser, serve, site) -> dict:
    """Each page opened once and measured at each size: {(page, (width, height)): measurement}."""
    root, pages = site
    base = serve(root)
    browser.set_script_timeout(30)
    results: dict = {}
    for page in pages:
        _set_viewport(browser, *LAPTOPS[0])
        browser.get(f"{base}/{page}.html")
        browser.execute_script(OPEN_EVERYTHING)
        state = browser.execute_async_script(WAIT_FOR_PAGE)
        assert state == "typeset", f"{page}: {state}"
        for size in [*LAPTOPS, PHONE]:
            _set_viewport(browser, *size)
            results[page, size] = browser.execute_script(MEASURE, KINDS, TOLERANCE_PX)
            if size == PHONE:
                results[page, size]["overlaps"] = browser.execute_script(OVERLAPS)
    browser.execute_cdp_cmd("Emulation.clearDeviceMetricsOverride", {})
    results["pages"] = pages
    return results


def describe(page: str, item: dict) -> str:
    over = max(item["inside"], item["past"])
    return f"{page}: {item['kind']} {over} px too wide: {item['text']!r}"


@pytest.mark.parametrize("size", LAPTOPS, ids=[f"{w}x{h}" for w, h in LAPTOPS])
def test_every_page_fits_its_column_on_a_laptop(measured, size):
    problems = []
    for page in measured["pages"]:
        result = measured[page, size]
        if result["page"] > TOLERANCE_PX:
            problems.append(f"{page}: the page scrolls sideways by {result['page']} px")
        problems += [describe(page, item) for item in result["found"]]
    width, height = size
    assert not problems, f"{len(problems)} elements overflow the column at {width}x{height}:\n" + "\n".join(problems)


def test_nothing_overlaps_on_a_phone(measured):
    problems = []
    for page in measured["pages"]:
        result = measured[page, PHONE]
        problems += [f"{page}: the article overlaps {overlap}" for overlap in result["overlaps"]]
        if result["page"] > TOLERANCE_PX:
            problems.append(f"{page}: the page scrolls sideways by {result['page']} px")
        for item in result["found"]:  # may scroll inside a box of its own that stays in the column
            if item["scroller_past"] is None or item["scroller_past"] > TOLERANCE_PX:
                problems.append(describe(page, item) + " (and no box of its own scrolls it)")
    assert not problems, f"{len(problems)} overlaps at {PHONE[0]}x{PHONE[1]}:\n" + "\n".join(problems)
