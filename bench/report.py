"""How every benchmark reports: an aligned table, a chart (PNG) and, last, one JSON line.

- `print_table(headers, rows)`: columns as wide as their widest cell, the first aligned
  left and the others right (numbers); cells are printed as given, so format them first;
- `bar_chart(path, values, ...)`: one horizontal bar per name, labelled with its value;
- `chart(path, panels, rows=None)`: a figure of side-by-side axes (a grid with `rows`) for
  a chart of its own, saved on exit;
- `print_figures(figures)`: the JSON line a run ends with.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import orjson

RULE = "-"


def print_table(headers: Sequence[str], rows: Iterable[Sequence[object]], indent: str = "") -> None:
    cells = [[str(cell) for cell in row] for row in rows]
    widths = [max(len(row[i]) for row in [list(headers), *cells]) for i in range(len(headers))]

    def line(row: Sequence[str]) -> str:
        first, *rest = (
            cell.ljust(width) if i == 0 else cell.rjust(width)
            for i, (cell, width) in enumerate(zip(row, widths, strict=True))
        )
        return indent + "  ".join([first, *rest])

    header = line(headers)
    print(header)
    print(indent + RULE * (len(header) - len(indent)))
    for row in cells:
        print(line(row))


def print_figures(figures: Mapping[str, Any]) -> None:
    print(orjson.dumps(figures).decode())


@contextlib.contextmanager
def chart(
    path: Path, panels: int = 1, size: tuple[float, float] = (9, 4.5), rows: int | None = None
) -> Iterator[Any]:
    """A figure with `panels` axes side by side (one axes when 1), written to `path` on exit;
    with `rows`, a grid of `rows` such rows, always as a 2-D array `axes[row][column]`."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(rows or 1, panels, figsize=size, squeeze=rows is None)
    try:
        yield figure, axes
        figure.tight_layout()
        path.parent.mkdir(parents=True, exist_ok=True)
        figure.savefig(path, dpi=110)
    finally:
        plt.close(figure)


def bar_chart(
    path: Path,
    values: Mapping[str, float],
    title: str,
    xlabel: str,
    colours: Mapping[str, str] | None = None,
) -> None:
    """Horizontal bars in `values`' order, top to bottom; `colours` by name (default blue)."""
    names = list(values)
    with chart(path) as (_, axes):
        bars = axes.barh(
            names,
            [values[n] for n in names],
            color=[(colours or {}).get(n, "#1f77b4") for n in names],
        )
        axes.bar_label(bars, labels=[f"{values[name]:,.0f}" for name in names], padding=3)
        axes.invert_yaxis()
        axes.set_xlabel(xlabel)
        axes.set_title(title)
        axes.set_xlim(0, max(values.values()) * 1.2)
