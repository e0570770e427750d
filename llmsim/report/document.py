"""A renderer-neutral report: headings, sentences, tables and figures.

The single-run report and the comparison both build one `Document`; `markdown.py` and `html.py` only
render it. So the two files always say the same thing, and escaping is done in exactly one place per
output format (the renderers), never by the code that gathers the facts. All text in a Document is
plain text, unescaped: it may contain scenario names and error messages, which are user input.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Union


@dataclass(frozen=True)
class Cell:
    """One table cell: what is shown, and the value it sorts by (a number sorts numerically)."""

    text: str
    sort: float | str | None = None
    tone: str | None = None  # "better" | "worse": colour of a change in a comparison


@dataclass
class Table:
    columns: list[str]
    rows: list[list[Cell]]
    numeric: list[bool] = field(default_factory=list)  # per column: right-aligned, sorts as a number
    caption: str = ""


@dataclass
class Figure:
    """A rendered figure (PNG bytes) or the reason it is absent (no data for it in this run)."""

    name: str  # file stem: figures/<name>.png
    title: str
    caption: str = ""
    png: bytes | None = None
    skipped: str | None = None  # why there is no figure


@dataclass
class Paragraph:
    text: str


@dataclass
class Bullets:
    items: list[str]


Block = Union[Paragraph, Bullets, Table, Figure]


@dataclass
class Section:
    title: str
    blocks: list[Block] = field(default_factory=list)
    anchor: str = ""


@dataclass
class Point:
    """One summary sentence, with optional detail sentences under it (why the others lose)."""

    text: str
    details: list[str] = field(default_factory=list)


@dataclass
class Document:
    title: str
    summary: list[Point]  # plain-words sentences shown first
    sections: list[Section]
    meta: list[tuple[str, str]] = field(default_factory=list)  # (label, value) lines under the title

    def figures(self) -> list[Figure]:
        return [b for s in self.sections for b in s.blocks if isinstance(b, Figure)]
