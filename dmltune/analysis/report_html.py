"""``report.html``: report.md's sections as one self-contained page, written beside it.

The order puts the answer first: the opening and the verdict table, then the figures, then the other
tables (design, arms, cost, expected best, gaps, sensitivity) and each searched arm's table of
configurations. Figures are embedded as ``data:`` URIs; the page loads nothing from the network and
has no script. The Markdown the sections hold is a small subset (paragraphs, ``- `` lists,
``**bold**``, ``*italic*``, `` `code` ``), rendered here; tables are rendered from their rows.
"""

from __future__ import annotations

import base64
import html
import mimetypes
import re

from .compare import Analysis
from .formatting import in_unit, interval_text, time_name, time_unit
from .report import Figure, Rows, Section
from .selection import configurations

FIRST = ("opening", "verdicts", "figures")            # then every other section in report.md's order
LAST = ("few_seeds", "closing")

STYLE = """
body { font-family: system-ui, -apple-system, "Segoe UI", sans-serif; margin: 2em auto; max-width: 1400px;
       padding: 0 1em; color: #222; line-height: 1.45; }
table { border-collapse: collapse; margin: 0.8em 0; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.5em; text-align: left; vertical-align: top; }
th { background: #f3f3f3; }
tr:nth-child(even) td { background: #fafafa; }
code { background: #f3f3f3; padding: 0 0.2em; }
figure { margin: 1em 0 2em; }
figure img { max-width: 100%; height: auto; border: 1px solid #eee; }
figcaption { max-width: 60em; color: #444; }
.table-wrap { overflow-x: auto; }
"""

_CODE = re.compile(r"`([^`]+)`")
_BOLD = re.compile(r"\*\*(.+?)\*\*")
_ITALIC = re.compile(r"(?<![\w*])\*(?!\s)(.+?)(?<!\s)\*(?![\w*])")


def inline(text) -> str:
    """One line of the report's Markdown as HTML (escaped; code spans are left as they are)."""
    pieces = _CODE.split(str(text))
    out = []
    for i, piece in enumerate(pieces):
        if i % 2:
            out.append(f"<code>{html.escape(piece)}</code>")
        else:
            piece = _BOLD.sub(r"<strong>\1</strong>", html.escape(piece, quote=False))
            out.append(_ITALIC.sub(r"<em>\1</em>", piece))
    return "".join(out)


def text_html(markdown: str) -> str:
    """Paragraphs (blank-line separated) and ``- `` lists."""
    out = []
    for paragraph in re.split(r"\n\s*\n", markdown.strip()):
        lines = [line for line in paragraph.splitlines() if line.strip()]
        if not lines:
            continue
        items = [line for line in lines if line.startswith("- ")]
        if items and len(items) == len(lines):
            out.append("<ul>" + "".join(f"<li>{inline(line[2:])}</li>" for line in items) + "</ul>")
        else:
            out.append(f"<p>{inline(' '.join(line.strip() for line in lines))}</p>")
    return "\n".join(out)


def table_html(rows: list[dict]) -> str:
    if not rows:
        return "<p>(none)</p>"
    header = list(rows[0])
    head = "".join(f"<th>{inline(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{inline(r.get(h, ''))}</td>" for h in header) + "</tr>" for r in rows)
    return f'<div class="table-wrap"><table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table></div>'


def data_uri(path) -> str:
    kind = mimetypes.guess_type(str(path))[0] or "application/octet-stream"
    return f"data:{kind};base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def figure_html(figure: Figure) -> str:
    title = f"<h3>{html.escape(figure.title)}</h3>"
    if not figure.path.is_file():
        return title + f"<p>(figure file {html.escape(figure.link)} is missing)</p>"
    return (title + f'<figure><img src="{data_uri(figure.path)}" alt="{html.escape(figure.name)}">'
            f"<figcaption>{inline(figure.note)}</figcaption></figure>")


def block_html(block) -> str:
    if isinstance(block, Rows):
        return table_html(block.rows)
    if isinstance(block, Figure):
        return figure_html(block)
    return text_html(block) if block and block.strip() else ""


def section_html(section: Section) -> str:
    level = min(max(section.level, 1), 6)
    head = f"<h{level}>{inline(section.title)}</h{level}>" if section.title else ""
    return "\n".join(part for part in [head, *(block_html(b) for b in section.blocks)] if part)


def configurations_section(a: Analysis) -> Section | None:
    """Every searched arm's configurations, best first (as tables/configurations_<arm>.csv)."""
    st, conf = a.table, a.settings["confidence"]
    pct = int(round(100 * conf))
    blocks = []
    for arm in a.searched_arms:
        table = configurations(st, arm, conf, a.settings["failure_value"])
        unit = time_unit(table.cost_h)
        rows = [{"configuration": r.configuration, "trials (usable / failed)": f"{r.trials} ({r.usable} / {r.failed})",
                 f"val {st.metric[4:]} (mean ± {pct}% CI)": interval_text(r.val_mean, r.val_half, r.val_n),
                 f"test {st.test_metric[5:]} (mean ± {pct}% CI)": interval_text(r.test_mean, r.test_half, r.test_n),
                 f"{time_name(st.cost_unit)} ({unit[0]})": in_unit(r.cost_h, unit)} for r in table.itertuples()]
        blocks += [f"**{arm}** (`tables/configurations_{arm}.csv`)\n", Rows(rows)]
    if not blocks:
        return None
    return Section("configurations", "Configurations of each searched arm", 2,
                   ["Best first on validation (failures counted at the failure value), as selection ranks them.\n",
                    *blocks])


def ordered(sections: list[Section], a: Analysis) -> list[Section]:
    by_key = {s.key: s for s in sections}
    first = [by_key[k] for k in FIRST if k in by_key]
    last = [by_key[k] for k in LAST if k in by_key]
    middle = [s for s in sections if s.key not in FIRST + LAST]
    extra = configurations_section(a)
    return first + middle + ([extra] if extra else []) + last


def html_report(sections: list[Section], a: Analysis) -> str:
    """The whole page: ``sections`` (from :func:`.report.sections`) with the verdicts first, then the
    figures, then the tables."""
    body = "\n".join(section_html(s) for s in ordered(sections, a))
    title = html.escape(f"Study {a.table.name}")
    return ("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n"
            f"<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n<title>{title}</title>\n"
            f"<style>{STYLE}</style>\n</head>\n<body>\n{body}\n</body>\n</html>\n")


__all__ = ["html_report", "inline", "table_html", "text_html"]
