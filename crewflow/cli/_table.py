"""Tables for the commands: borderless, as wide as their cells, narrowed to fit a terminal.

Rich only (no store, no crew machinery): ``crewflow processes`` and the store commands share it.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from rich import box
from rich.table import Table
from rich.text import Text

if TYPE_CHECKING:
    from collections.abc import Sequence

    from rich.console import Console


Cell = Text | str
"""What a table's cell may be: a plain string, or `Text` with its own style."""
_GAP = 2
"""Columns are this far apart (one space of padding, one of rule)."""


def print_table(
    console: Console,
    columns: Sequence[str],
    rows: Sequence[Sequence[Cell]],
    optional: Sequence[str] = (),
) -> None:
    """Print a borderless table: a header ending in ``>`` is right-aligned, one ending in ``~``
    is narrowed first when the terminal is too narrow, one ending in ``!`` is never cut (an id
    to copy).

    On a terminal, the ``optional`` columns are left out, in that order, until the table fits
    (an optional column the table does not have is passed over). Elsewhere (a pipe, a file)
    every row is printed whole, however wide.
    """
    # Text, not str: no markup or emoji parsing of the user's names (and it is faster).
    cells = [[cell if isinstance(cell, Text) else Text(cell) for cell in row] for row in rows]
    keep = list(range(len(columns)))
    widths = [
        max([len(_title(columns[index])), *(row[index].cell_len for row in cells)])
        for index in keep
    ]

    def needed() -> int:
        return sum(widths[index] for index in keep) + _GAP * (len(keep) - 1)

    if console.is_terminal:
        for name in (name for name in optional if name in columns):
            if needed() <= console.width:
                break
            keep.remove(columns.index(name))
    if _fits(console, cells, keep, needed()):
        console.print(_aligned(columns, cells, keep, widths), soft_wrap=True)
    elif console.is_terminal:
        console.print(_table(columns, cells, keep, widths))  # rich narrows "~" columns first
    else:
        width = console.width
        console.width = max(needed(), width)  # print(width=...) would not go past the console's
        try:
            console.print(_table(columns, cells, keep, widths))
        finally:
            console.width = width


def _fits(
    console: Console, rows: Sequence[Sequence[Text]], keep: Sequence[int], width: int
) -> bool:
    """Whether every cell shows whole on one line, so `_aligned` draws what `_table` would."""
    if not keep or (console.is_terminal and width > console.width):
        return False
    return not any("\n" in cell.plain or "\t" in cell.plain for row in rows for cell in row)


def _aligned(
    columns: Sequence[str], rows: Sequence[Sequence[Text]], keep: Sequence[int], widths: list[int]
) -> Text:
    """What `_table` draws when every column is wide enough, padded here: rich's table layout
    takes longer than the rest of ``crewflow runs`` after its imports."""

    def line(cells: Sequence[Text]) -> Text:
        parts = []
        for index in keep:
            cell, pad = cells[index], Text(" " * (widths[index] - cells[index].cell_len))
            pad.stylize(cell.style)
            parts.append(Text.assemble(pad, cell) if columns[index].endswith(">") else cell + pad)
        return Text(" " * _GAP).join(parts)

    header = line([Text(_title(name), style="bold") for name in columns])
    rule = Text("─" * header.cell_len)
    return Text("\n").join([header, rule, *(line(row) for row in rows)])


def _title(header: str) -> str:
    """A column's header without its layout mark (``>``, ``~`` or ``!``)."""
    return header.rstrip(">~!")


def _table(
    columns: Sequence[str],
    rows: Sequence[Sequence[Text]],
    keep: Sequence[int],
    widths: Sequence[int],
) -> Table:
    table = Table(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, padding=(0, 1, 0, 0))
    for index in keep:
        header = columns[index]
        table.add_column(
            Text(_title(header)),
            min_width=widths[index] if header.endswith("!") else None,
            justify="right" if header.endswith(">") else "left",
            # Rich narrows the columns that may wrap first; those are cut, never wrapped.
            no_wrap=not header.endswith("~"),
            overflow="ellipsis",
            header_style="bold",
        )
    for row in rows:
        table.add_row(*(row[index] for index in keep))
    return table
