"""A tiny table used by ``list_layers`` and ``FeatureMaps.summary``.

It prints as aligned text, shows as an escaped HTML table in notebooks and
converts to a list of dicts for code.
"""

from __future__ import annotations

import html
from dataclasses import dataclass, field
from typing import Any, Iterator, Sequence

__all__ = ["Table"]


def _fmt(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, float):
        if value != value:  # NaN
            return "nan"
        if value == 0 or 1e-3 <= abs(value) < 1e5:
            return f"{value:.4g}"
        return f"{value:.3e}"
    if isinstance(value, tuple):
        return "(" + ", ".join(str(v) for v in value) + ")"
    return str(value)


@dataclass
class Table:
    """Rows of values under named columns.

    Example:
        >>> t = Table(["name", "n"], [["a", 1], ["b", 22]])
        >>> print(t)
        name   n
        ----  --
        a      1
        b     22
        >>> t.to_dicts()[1]
        {'name': 'b', 'n': 22}
    """

    columns: Sequence[str]
    rows: list[list[Any]] = field(default_factory=list)
    title: str | None = None

    def __len__(self) -> int:
        return len(self.rows)

    def __iter__(self) -> Iterator[dict[str, Any]]:
        return iter(self.to_dicts())

    def to_dicts(self) -> list[dict[str, Any]]:
        """The rows as dicts keyed by column name."""
        return [dict(zip(self.columns, row)) for row in self.rows]

    def column(self, name: str) -> list[Any]:
        """All values of one column."""
        i = list(self.columns).index(name)
        return [row[i] for row in self.rows]

    def __str__(self) -> str:
        cells = [[_fmt(v) for v in row] for row in self.rows]
        widths = [len(c) for c in self.columns]
        for row in cells:
            widths = [max(w, len(c)) for w, c in zip(widths, row)]
        numeric = [
            all(isinstance(r[i], (int, float)) or r[i] is None for r in self.rows) and bool(self.rows)
            for i in range(len(self.columns))
        ]

        def line(values: Sequence[str]) -> str:
            parts = [v.rjust(w) if num else v.ljust(w) for v, w, num in zip(values, widths, numeric)]
            return "  ".join(parts).rstrip()

        out = [self.title] if self.title else []
        out.append(line(list(self.columns)))
        out.append("  ".join("-" * w for w in widths))
        out.extend(line(row) for row in cells)
        return "\n".join(out)

    def __repr__(self) -> str:
        return str(self)

    def _repr_html_(self) -> str:
        head = "".join(f"<th>{html.escape(c)}</th>" for c in self.columns)
        body = "".join(
            "<tr>" + "".join(f"<td>{html.escape(_fmt(v))}</td>" for v in row) + "</tr>" for row in self.rows
        )
        caption = f"<caption>{html.escape(self.title)}</caption>" if self.title else ""
        return f"<table>{caption}<thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"
