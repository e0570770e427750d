"""report.md: the same `Document` as report.html, for reading in a terminal, an editor or on GitHub.

Figures are PNG files beside it (`figures/<name>.png`), linked relatively, so the folder can be moved
or committed as a whole. Text is escaped for markdown tables and for the raw HTML that markdown
renderers pass through (a `<script>` in an error message must stay text), with CommonMark's backslash
escapes, and only where a renderer would read markup: "needs 412 GB > 80 GB" stays as written, not
`&gt;`, so the file also reads as plain text in a terminal.
"""

from __future__ import annotations

import re

from llmsim.report.document import Block, Bullets, Document, Figure, Paragraph, Point, Section, Table
# The formatters used to live here; they are re-exported for code that imported them from this module.
from llmsim.report.units import fmt_bytes, fmt_rate, fmt_seconds, format_value  # noqa: F401

FIGURE_DIR = "figures"


# What a CommonMark renderer would not show as typed: the start of an HTML tag, comment or declaration
# (`<b`, `</`, `<!`, `<?`) and a character reference (`&amp;`, `&#62;`). CommonMark 0.31, sections 2.4
# (backslash escapes: any ASCII punctuation), 2.5 (entity references) and 6.6 (raw HTML).
_MARKUP = re.compile(r"<(?=[A-Za-z/!?])|&(?=#?\w+;)|[|\\]")  # a backslash too: "\<b>" must not become "\\<b>"


def md_escape(text: object) -> str:
    """Plain text safe inside a markdown table cell or list item, escaped only where markdown would read
    markup; `>` and a lone `&` or `<` stay as they are."""
    flat = str(text).replace("\r", " ").replace("\n", " ")
    return _MARKUP.sub(lambda m: "\\" + m.group(0), flat)


def render_table(table: Table) -> str:
    numeric = table.numeric or [False] * len(table.columns)
    lines = ["| " + " | ".join(md_escape(c) for c in table.columns) + " |",
             "|" + "|".join("---:" if n else "---" for n in numeric) + "|"]
    lines += ["| " + " | ".join(md_escape(c.text) for c in row) + " |" for row in table.rows]
    if table.caption:
        lines += ["", md_escape(table.caption)]
    return "\n".join(lines)


def render_figure(fig: Figure, figure_dir: str = FIGURE_DIR) -> str:
    if fig.png is None:
        return f"*{md_escape(fig.title)}: not shown — {md_escape(fig.skipped)}.*"
    caption = md_escape(fig.title) + (f" — {md_escape(fig.caption)}" if fig.caption else "")
    return f"![{md_escape(fig.title)}]({figure_dir}/{fig.name}.png)\n\n{caption}"


def render_block(block: Block) -> str:
    if isinstance(block, Paragraph):
        return md_escape(block.text)
    if isinstance(block, Bullets):
        return "\n".join(f"* {md_escape(i)}" for i in block.items)
    if isinstance(block, Table):
        return render_table(block)
    return render_figure(block)


def render_points(points: list[Point]) -> str:
    lines = []
    for p in points:
        lines.append(f"* {md_escape(p.text)}")
        lines += [f"  * {md_escape(d)}" for d in p.details]
    return "\n".join(lines)


def render_section(section: Section) -> str:
    return "\n\n".join([f"## {md_escape(section.title)}"] + [render_block(b) for b in section.blocks])


def render_markdown(doc: Document) -> str:
    """The whole report as markdown; figures are expected under figures/ beside the file."""
    parts = [f"# {md_escape(doc.title)}"]
    if doc.meta:
        parts.append("  \n".join(f"**{md_escape(k)}:** {md_escape(v)}" for k, v in doc.meta))
    parts += ["## Summary", render_points(doc.summary)]
    parts += [render_section(s) for s in doc.sections]
    return "\n\n".join(parts) + "\n"

