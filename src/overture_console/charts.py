"""Bar charts laid out for SVG, drawn by the page with no script.

A chart has categories (days, steps, channels, ...) and one or more series
(runs and sends, p50/p95/p99, holdout and treatment); each category gets a
group of bars, one per series, scaled to a round maximum with four grid
lines. The page also gives each chart's numbers as a table, for screen
readers and for people who want the figures.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

__all__ = ["Bar", "Chart", "bar_chart"]

WIDTH, HEIGHT, LEFT, BOTTOM, TOP = 720, 260, 56, 56, 16
COLORS = ("#3b5bdb", "#f08c00", "#2f9e44", "#c2255c")


@dataclass(frozen=True)
class Bar:
    """One bar."""

    x: float
    y: float
    width: float
    height: float
    color: str
    label: str
    """What a tooltip and the table say: ``2026-01-02 runs: 12``."""


@dataclass
class Chart:
    """A laid-out chart."""

    id: str
    title: str
    categories: list[str]
    series: list[str]
    values: list[list[float]]
    """values[series][category]."""
    fmt: Callable[[float], str]
    bars: list[Bar] = field(default_factory=list)
    ticks: list[tuple[float, str]] = field(default_factory=list)
    """(y, label) of the grid lines."""
    labels: list[tuple[float, str]] = field(default_factory=list)
    """(x, text) of the category labels."""
    colors: list[str] = field(default_factory=list)
    width: int = WIDTH
    height: int = HEIGHT
    note: str = ""

    @property
    def empty(self) -> bool:
        """Whether there is nothing to draw."""
        return not self.categories or not any(v for row in self.values for v in row)

    def rows(self) -> list[tuple[str, list[str]]]:
        """The table: per category, the formatted value of each series."""
        return [(c, [self.fmt(self.values[s][i]) for s in range(len(self.series))]) for i, c in enumerate(self.categories)]


def _nice(top: float) -> float:
    if top <= 0:
        return 1.0
    power = 10 ** math.floor(math.log10(top))
    return float(next(step * power for step in (1, 2, 2.5, 5, 10) if step * power >= top))


def bar_chart(id: str, title: str, categories: Sequence[str], series: dict[str, Sequence[float]], *,
              fmt: Callable[[float], str] = lambda v: f"{v:,.0f}", note: str = "", ceiling: float | None = None) -> Chart:
    """Lay out a grouped bar chart of *series* (name to one value per category)."""
    names = list(series)
    values = [[float(v) for v in series[n]] for n in names]
    chart = Chart(id=id, title=title, categories=list(categories), series=names, values=values, fmt=fmt, note=note,
                  colors=list(COLORS[: len(names)]))
    if chart.empty:
        return chart
    top = ceiling if ceiling is not None else _nice(max(max(row) for row in values))
    plot_w, plot_h = WIDTH - LEFT - 10, HEIGHT - TOP - BOTTOM
    group = plot_w / len(categories)
    bar_w = max(2.0, min(40.0, group * 0.8 / len(names)))
    for i, category in enumerate(categories):
        start = LEFT + i * group + (group - bar_w * len(names)) / 2
        for s, name in enumerate(names):
            value = values[s][i]
            h = plot_h * min(value, top) / top
            chart.bars.append(Bar(x=round(start + s * bar_w, 1), y=round(TOP + plot_h - h, 1), width=round(bar_w - 1, 1), height=round(h, 1),
                                  color=COLORS[s % len(COLORS)], label=f"{category} {name}: {fmt(value)}"))
        chart.labels.append((round(LEFT + i * group + group / 2, 1), category))
    chart.ticks = [(round(TOP + plot_h - plot_h * k / 4, 1), fmt(top * k / 4)) for k in range(5)]
    return chart
