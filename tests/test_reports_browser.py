"""A study's reports in a real browser: headless Chromium (no network) renders every
HTML report and plotly draws each figure; every link in report.md resolves to a file."""

from __future__ import annotations

import re
import shutil
import subprocess
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from html.parser import HTMLParser
from pathlib import Path

CHROMIUM_FLAGS = [
    "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
    "--disable-background-networking", "--disable-component-update", "--disable-sync",
    # no network at all: a page that needs a CDN fails here instead of passing by luck
    "--host-resolver-rules=MAP * ~NOTFOUND",
    "--virtual-time-budget=10000",  # let scripts and plotly's deferred drawing finish
]
VOID_TAGS = {"area", "base", "br", "col", "embed", "hr", "img", "input", "link", "meta",
             "source", "track", "wbr"}


class Figures(HTMLParser):
    """Each plotly figure `<div class="plotly-graph-div">`: its classes and a count of the
    classes of everything inside it (script text is not markup and is not looked at)."""

    def __init__(self) -> None:
        super().__init__()
        self.depth = 0
        self.figures: list[dict] = []
        self._open: list[tuple[int, dict]] = []  # (depth, figure) of figures being read

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        classes = (dict(attrs).get("class") or "").split()
        for _, figure in self._open:
            figure["inside"].update(classes)
        if "plotly-graph-div" in classes:
            figure = {"classes": set(classes), "inside": Counter()}
            self.figures.append(figure)
            self._open.append((self.depth, figure))
        if tag not in VOID_TAGS:
            self.depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in VOID_TAGS:
            return
        self.depth -= 1
        self._open = [(depth, figure) for depth, figure in self._open if depth < self.depth]


def figures(html: str) -> list[dict]:
    parser = Figures()
    parser.feed(html)
    return parser.figures


def chromium() -> str:
    path = shutil.which("chromium") or shutil.which("chromium-browser")
    assert path, "Chromium is not installed: apt-get install -y chromium (.ci/run does)"
    return path


def rendered_dom(page: Path, profile: Path) -> str:
    """The page's DOM after Chromium ran its scripts, from a fresh profile."""
    done = subprocess.run(
        [chromium(), *CHROMIUM_FLAGS, f"--user-data-dir={profile}", "--dump-dom",
         page.resolve().as_uri()],
        capture_output=True, text=True, timeout=180,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def test_every_html_report_renders_its_figures_in_chromium(tiny_study, tmp_path):
    pages = sorted(tiny_study.results.rglob("*.html"))
    # a study with complete trials draws all of these (report.md lists them)
    names = {page.stem for page in pages}
    assert {"optimization_history", "param_importances", "intermediate_values",
            "parallel_coordinate", "contour", "slice", "timeline"} <= names, names
    with ThreadPoolExecutor(2) as pool:
        doms = list(pool.map(rendered_dom, pages, [tmp_path / f"profile{i}" for i in range(len(pages))]))
    for page, dom in zip(pages, doms, strict=True):
        expected = len(figures(page.read_text(encoding="utf-8")))
        drawn = figures(dom)
        assert expected >= 1 and len(drawn) == expected, (page.name, expected, len(drawn))
        for figure in drawn:
            # plotly marks a figure it has drawn and puts its SVG layers and traces inside
            assert "js-plotly-plot" in figure["classes"], page.name
            assert figure["inside"]["main-svg"] >= 1, page.name
            assert figure["inside"]["trace"] >= 1, (page.name, "no trace drawn")


def test_a_page_without_plotly_js_draws_nothing(tmp_path):
    """The check above can fail: the same figure with plotly.js missing is not drawn."""
    page = tmp_path / "broken.html"
    page.write_text('<html><head><script src="plotly.min.js"></script></head><body>'
                    '<div id="f" class="plotly-graph-div"></div><script>'
                    'Plotly.newPlot("f", [{"y": [1, 2, 3], "type": "scatter"}]);'
                    "</script></body></html>", encoding="utf-8")
    drawn = figures(rendered_dom(page, tmp_path / "profile"))
    assert len(drawn) == 1 and "js-plotly-plot" not in drawn[0]["classes"]
    assert drawn[0]["inside"]["main-svg"] == 0


def test_every_link_in_report_md_resolves_to_a_file(tiny_study):
    report = tiny_study.results / "report.md"
    targets = re.findall(r"!?\[[^\]]*\]\(([^)\s]+)\)", report.read_text(encoding="utf-8"))
    local = [t for t in targets if not re.match(r"[a-z]+://", t)]
    assert len(local) >= 8, local  # best_config.yaml and the plots at least
    missing = [t for t in local if not (report.parent / t.split("#")[0]).is_file()]
    assert not missing, missing
    linked_pages = {(report.parent / t).resolve() for t in local if t.endswith(".html")}
    assert linked_pages == {p.resolve() for p in (report.parent / "plots").glob("*.html")}
