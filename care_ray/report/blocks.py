"""What a section is made of: small typed blocks that hold plain text, never HTML.

A section builder returns a Section of these blocks; templates/blocks.html.j2 has one macro per
block kind (the `kind` of each class) and turns them into HTML with every value escaped. The one
exception is a Plot's svg, which is Markup: matplotlib's own output, the only markup made in Python.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import ClassVar

from markupsafe import Markup


@dataclass(frozen=True, init=False)
class Paragraph:
    """A finding in prose: its sentences, joined by spaces (empty ones dropped)."""

    sentences: tuple[str, ...]
    kind: ClassVar[str] = "paragraph"

    def __init__(self, *sentences: str | None) -> None:
        object.__setattr__(self, "sentences", tuple(s for s in sentences if s))


@dataclass(frozen=True, init=False)
class Bullets:
    """Findings one per line (empty ones dropped; no items, no list)."""

    items: tuple[str, ...]
    kind: ClassVar[str] = "bullets"

    def __init__(self, items: Iterable[str | None]) -> None:
        object.__setattr__(self, "items", tuple(s for s in items if s))


@dataclass(frozen=True)
class Table:
    """Rows of cells already formatted as text; columns from `numeric_from` on are right-aligned
    numbers, rows marked in `highlight` are emphasised."""

    headers: Sequence[str]
    rows: Sequence[Sequence[str]]
    caption: str | None = None
    highlight: Sequence[bool] | None = None
    numeric_from: int = 1
    kind: ClassVar[str] = "table"

    def __post_init__(self) -> None:
        if self.highlight is not None and len(self.highlight) != len(self.rows):
            raise ValueError(f"{len(self.highlight)} highlight marks for {len(self.rows)} rows")


@dataclass(frozen=True)
class Plot:
    """A matplotlib figure as inline SVG (its ids already prefixed with `id`) and its caption."""

    id: str
    svg: Markup
    caption: str
    kind: ClassVar[str] = "plot"


@dataclass(frozen=True)
class Heading:
    """A sub-heading inside a section."""

    text: str
    kind: ClassVar[str] = "heading"


@dataclass(frozen=True)
class Details:
    """Blocks folded away behind a summary line (long tables), or unfolded when `open`."""

    summary: str
    blocks: Sequence[Block]
    open: bool = False
    css_class: str | None = None
    kind: ClassVar[str] = "details"


@dataclass(frozen=True)
class Cluster:
    """One cluster of low-score rationales: its size, top terms, an example rationale and the
    transcript quote that rationale cited (shown as written, escaped like any other text)."""

    number: str
    size: str
    share: str
    top_terms: str
    rationale: str
    quote: str
    kind: ClassVar[str] = "cluster"


Block = Paragraph | Bullets | Table | Plot | Heading | Details | Cluster


def shown(blocks: Iterable[Block]) -> list[Block]:
    """The blocks that show something: a paragraph without sentences or a list without items
    does not."""
    return [
        b
        for b in blocks
        if not (isinstance(b, Paragraph) and not b.sentences)
        and not (isinstance(b, Bullets) and not b.items)
    ]


@dataclass(frozen=True)
class Section:
    """One finding of the page: a heading in the contents and a box of blocks."""

    id: str
    title: str
    blocks: Sequence[Block]


@dataclass(frozen=True)
class Source:
    """Where an evaluation or analysis came from: (label, value) lines in the page's header."""

    heading: str
    items: Sequence[tuple[str, str]]


@dataclass(frozen=True)
class Group:
    """The sections of one evaluation or analysis folder, with an introduction."""

    id: str
    heading: str
    intro: Sequence[Block]
    sections: Sequence[Section] = field(default_factory=tuple)
