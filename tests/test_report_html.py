"""report.html: written beside report.md by `dmltune report` (and the end of `dmltune run`), one page
that needs nothing else: the verdict table first, then every figure inline, then the tables; checked
in a real headless browser when Chromium is installed."""

from __future__ import annotations

import base64
import html
import re
import shutil
import subprocess
import sys
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest

from synthetic_study import write_study_dir

INSTALL = "apt-get update && apt-get install -y chromium"


class Page(HTMLParser):
    """What a page holds: tags in order, every src/href, each table's cells as text, the headings."""

    def __init__(self):
        super().__init__(convert_charrefs=True)
        self.tags, self.links, self.tables, self.headings, self.images = [], [], [], [], []
        self._cell = self._heading = None

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        self.tags.append(tag)
        self.links += [attrs[k] for k in ("src", "href") if k in attrs]
        if tag == "img":
            self.images.append(attrs)
        if tag == "table":
            self.tables.append([])
        elif tag == "tr":
            self.tables[-1].append([])
        elif tag in ("td", "th"):
            self._cell = []
        elif re.fullmatch(r"h[1-6]", tag):
            self._heading = []

    def handle_endtag(self, tag):
        if tag in ("td", "th"):
            self.tables[-1][-1].append("".join(self._cell).strip())
            self._cell = None
        elif re.fullmatch(r"h[1-6]", tag):
            self.headings.append("".join(self._heading).strip())
            self._heading = None

    def handle_data(self, data):
        for part in (self._cell, self._heading):
            if part is not None:
                part.append(data)


def markdown_tables(text: str) -> list[list[list[str]]]:
    """Every table of report.md as rows of cell text, Markdown marks removed (the HTML's oracle)."""
    tables, current = [], None
    for line in text.splitlines():
        if line.startswith("|"):
            if set(line) <= set("|-"):
                continue
            cells = [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
            cells = [re.sub(r"\*\*(.+?)\*\*|\*(.+?)\*|`(.+?)`", lambda m: next(g for g in m.groups() if g), c)
                     for c in cells]
            if current is None:
                current = []
                tables.append(current)
            current.append(cells)
        else:
            current = None
    return tables


@pytest.fixture(scope="module")
def reported(tmp_path_factory):
    """A finished synthetic study reported with figures: (folder, report.md text, report.html text)."""
    from dmltune.analysis.report import write_report

    folder = write_study_dir(tmp_path_factory.mktemp("html") / "study", analysis={"reference": "ddtas"})
    write_report(folder)
    return folder, (folder / "report.md").read_text(), (folder / "report.html").read_text()


def test_html_holds_every_figure_inline_and_loads_nothing(reported):
    folder, md, page_text = reported
    page = Page()
    page.feed(page_text)
    linked = re.findall(r"!\[(\w+)\]\(([^)]+)\)", md)
    assert len(linked) >= 1 and len(page.images) == len(linked)
    for (name, rel), img in zip(linked, page.images):            # the same bytes as the file report.md links
        kind, data = img["src"].split(",", 1)
        assert kind.startswith("data:image/") and kind.endswith(";base64") and img["alt"] == name
        assert base64.b64decode(data) == (folder / rel).read_bytes()
    assert all(link.startswith("data:") for link in page.links)   # no file, no network
    assert not {"script", "link", "iframe", "object"} & set(page.tags)
    assert "@import" not in page_text and "url(" not in page_text


def test_html_puts_the_verdicts_first_then_figures_then_tables(reported):
    _, md, page_text = reported
    page = Page()
    page.feed(page_text)
    h = page.headings
    assert h[:3] == ["Study study", "Verdicts against ddtas", "Figures"]
    assert h.index("Arms") > h.index("Figures") and h[-1] == "Configurations of each searched arm"
    assert page_text.index("<table") < page_text.index("<img") < page_text.index("<h2>Arms")
    # every table of report.md, cell for cell, in the page (its first table: the verdicts)
    tables = markdown_tables(md)
    assert page.tables[0] == tables[0] and page.tables[0][1][:2] == ["asms_grid", "inconclusive"]
    for table in tables:
        assert table in page.tables
    configs = page.tables[-1]                                   # the grid's configurations, best first
    assert configs[0][:2] == ["configuration", "trials (usable / failed)"] and len(configs) == 1 + 6
    assert configs[1][0] == "gamma_pos=0.1, gamma_neg=0" and configs[1][2].startswith("0.5200")


def test_inline_markdown_is_escaped():
    from dmltune.analysis.report_html import inline, table_html, text_html

    assert inline("a <b> & **c** *d* `x<y`") == "a &lt;b&gt; &amp; <strong>c</strong> <em>d</em> <code>x&lt;y</code>"
    assert inline("n × 2 * 3") == "n × 2 * 3"                 # a lone star is no emphasis
    assert text_html("one\ntwo\n\n- x\n- y\n") == "<p>one two</p>\n<ul><li>x</li><li>y</li></ul>"
    assert "<td>a|b</td>" in table_html([{"h": "a|b"}])


def test_report_command_writes_html_beside_markdown(tmp_path):
    folder = write_study_dir(tmp_path / "s", analysis={"reference": "ddtas"})
    run = subprocess.run([sys.executable, "-m", "dmltune", "report", str(folder), "--no-figures"],
                         capture_output=True, text=True)
    assert run.returncode == 0, run.stderr[-2000:]
    text = (folder / "report.html").read_text()
    assert text.startswith("<!DOCTYPE html>") and "<img" not in text and "report.html" in run.stdout
    assert html.escape("gamma_pos=0.1, gamma_neg=0") in text


def chromium() -> str | None:
    return shutil.which("chromium") or shutil.which("chromium-browser")


CHECK = """<script>
window.addEventListener("load", function () {
  var images = Array.from(document.images);
  var broken = images.filter(function (i) { return !(i.complete && i.naturalWidth > 0); });
  var out = document.createElement("pre");
  out.id = "dmltune-check";
  out.textContent = "images=" + images.length + " broken=" + broken.map(function (i) { return i.alt; }).join(",");
  document.body.appendChild(out);
});
</script>
"""


@pytest.mark.slow
@pytest.mark.skipif(chromium() is None, reason=f"no chromium on PATH for the browser check; install it with `{INSTALL}`")
def test_html_renders_in_a_headless_browser(reported, tmp_path):
    folder, md, page_text = reported
    copy = tmp_path / "checked.html"                           # the check script goes in a copy only
    copy.write_text(page_text.replace("</body>", CHECK + "</body>"))
    flags = [chromium(), "--headless", "--no-sandbox", "--disable-gpu", "--enable-logging=stderr", "--v=0",
             "--hide-scrollbars", f"--user-data-dir={tmp_path / 'profile'}"]
    dom = subprocess.run(flags + ["--dump-dom", copy.as_uri()], capture_output=True, text=True, timeout=60)
    assert dom.returncode == 0, dom.stderr[-2000:]
    errors = [line for line in dom.stderr.splitlines() if ":CONSOLE" in line or "Uncaught" in line]
    assert errors == []
    verdict = re.search(r'<pre id="dmltune-check">(.*?)</pre>', dom.stdout)
    assert verdict, "the check script did not run"
    assert verdict.group(1) == f"images={md.count('![')} broken="
    shot = tmp_path / "page.png"
    run = subprocess.run(flags + ["--window-size=1200,1600", f"--screenshot={shot}", (folder / "report.html").as_uri()],
                         capture_output=True, text=True, timeout=60)
    assert run.returncode == 0 and shot.is_file(), run.stderr[-2000:]
    from matplotlib.image import imread

    pixels = imread(shot)
    assert pixels.shape[:2] == (1600, 1200)
    assert len(np.unique(pixels.reshape(-1, pixels.shape[-1]), axis=0)) > 10   # text, tables, a figure: not blank


def test_every_figure_in_the_report_has_its_modules_caption(reported):
    """report.md and report.html caption each figure with the caption its figure module writes (which names
    the interval drawn), and none reads noise as signal."""
    from dmltune.analysis import analyse, read_study_table
    from dmltune.analysis.figures import caption

    folder, md, page_text = reported
    a = analyse(read_study_table(folder), {"reference": "ddtas"})
    names = re.findall(r"!\[(\w+)\]\(", md)
    assert "validation_curves" in names
    for name in names:
        text = caption(name, a)
        assert text and text in md, name
        assert html.escape(text, quote=False) in page_text or html.escape(text) in page_text, name
    assert "sharp peak means" not in md
