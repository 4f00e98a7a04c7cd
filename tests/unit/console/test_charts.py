"""Unit tests of :mod:`overture_console.charts`: grouped bar charts laid out
for the analytics page's SVG (empty data, one point, a month of days,
percentile series side by side, round maxima, a ceiling, the figures'
table), and the page escaping what the charts' labels hold."""

from __future__ import annotations

import math
import re

import pytest

from overture_console.charts import BOTTOM, COLORS, HEIGHT, LEFT, TOP, WIDTH, Chart, _nice, bar_chart
from overture_console.render import ENV

PLOT_H = HEIGHT - TOP - BOTTOM
BASELINE = TOP + PLOT_H


def test_a_chart_of_nothing_is_empty_and_draws_nothing() -> None:
    """No categories, or only zeros (a new tenant's days), is an empty chart: no bars, no grid, no division by zero."""
    for chart in (bar_chart("c", "Nothing", [], {"runs": []}), bar_chart("c", "Zeros", ["01-01", "01-02"], {"runs": [0, 0], "sends": [0, 0]}),
                  bar_chart("c", "No series", ["a"], {}), bar_chart("c", "Zero ceiling", ["a"], {"v": [0]}, ceiling=100)):
        assert chart.empty, chart.title
        assert (chart.bars, chart.ticks, chart.labels) == ([], [], [])
    assert bar_chart("c", "Zeros", ["01-01"], {"runs": [0]}).rows() == [("01-01", ["0"])]


def test_a_single_point_is_one_bar_scaled_to_a_round_maximum() -> None:
    """One value of 7 is one bar standing on the baseline, 7/10 of the plot high (the grid goes to 10), centred on its label."""
    chart = bar_chart("c", "One", ["01-01"], {"runs": [7]})
    (bar,) = chart.bars
    assert bar.height == round(PLOT_H * 0.7, 1)
    assert bar.y + bar.height == pytest.approx(BASELINE)
    assert [label for _, label in chart.ticks] == ["0", "2", "5", "8", "10"]  # 2.5 and 7.5 as whole numbers by the default format
    assert chart.ticks[0][0] == BASELINE and chart.ticks[-1][0] == TOP
    (x, text), = chart.labels
    assert text == "01-01" and bar.x <= x <= bar.x + bar.width + 1
    assert bar.label == "01-01 runs: 7"


def test_a_month_of_days_fits_the_plot_without_overlap() -> None:
    """Thirty days of runs and sends: sixty bars, left to right in day then series order, inside the plot, none overlapping,
    the two series in their own colours."""
    days = [f"01-{d:02d}" for d in range(1, 31)]
    chart = bar_chart("per-day", "Runs and sends", days, {"runs": [d * 3 for d in range(30)], "sends": [d * 2 for d in range(30)]})
    assert len(chart.bars) == 60
    xs = [b.x for b in chart.bars]
    assert xs == sorted(xs)
    for a, b in zip(chart.bars, chart.bars[1:], strict=False):
        assert a.x + a.width <= b.x
    assert chart.bars[0].x >= LEFT and chart.bars[-1].x + chart.bars[-1].width <= WIDTH
    assert {b.color for b in chart.bars[0::2]} == {COLORS[0]} and {b.color for b in chart.bars[1::2]} == {COLORS[1]}
    assert [text for _, text in chart.labels] == days
    assert all(TOP <= b.y and b.y + b.height <= BASELINE + 0.1 for b in chart.bars)


def test_percentiles_are_bars_side_by_side_per_step() -> None:
    """Latency p50, p95 and p99 per step: three bars per step, touching in series order, the highest value tallest, each bar's
    label saying step, percentile and the formatted value."""
    fmt = lambda v: f"{v:.2f} s"  # noqa: E731 - the page's own kind of format
    chart = bar_chart("latency", "Step latency", ["welcome", "wait"], {"p50": [0.2, 1.0], "p95": [0.9, 2.0], "p99": [1.5, 3.0]}, fmt=fmt)
    assert chart.series == ["p50", "p95", "p99"] and chart.colors == list(COLORS[:3])
    welcome = chart.bars[:3]
    assert [b.label for b in welcome] == ["welcome p50: 0.20 s", "welcome p95: 0.90 s", "welcome p99: 1.50 s"]
    assert welcome[0].height < welcome[1].height < welcome[2].height
    assert welcome[1].x == pytest.approx(welcome[0].x + welcome[0].width + 1, abs=0.11)
    assert chart.rows() == [("welcome", ["0.20 s", "0.90 s", "1.50 s"]), ("wait", ["1.00 s", "2.00 s", "3.00 s"])]
    assert chart.bars[-1].height == pytest.approx(PLOT_H * 3 / 5, abs=0.1)  # the grid goes to 5 s


@pytest.mark.parametrize("top", [0.0001, 0.3, 0.7, 1, 3, 7, 9.99, 10, 11, 99, 100, 101, 250, 12_345, 99_999_999, 1e12])
def test_the_grid_goes_to_a_round_number_at_or_above_the_highest_value(top: float) -> None:
    """The scale's top is the least of 1, 2, 2.5, 5 and 10 times a power of ten that holds the highest value."""
    nice = _nice(top)
    assert nice >= top
    power = 10 ** math.floor(math.log10(top))
    assert any(nice == pytest.approx(s * power) for s in (1, 2, 2.5, 5, 10))
    assert nice < top * 5


def test_a_ceiling_fixes_the_scale_and_clips_what_passes_it() -> None:
    """Rates with a ceiling of 100: the grid goes to 100 whatever the data, and a value past it (a rounding's 100.4) is drawn
    full height, no higher."""
    chart = bar_chart("success", "Send success rate", ["a", "b"], {"delivered": [50, 100.4]}, fmt=lambda v: f"{v:.0f}%", ceiling=100)
    assert [t for _, t in chart.ticks] == ["0%", "25%", "50%", "75%", "100%"]
    assert chart.bars[0].height == round(PLOT_H / 2, 1)
    assert chart.bars[1].height == PLOT_H and chart.bars[1].y == TOP


def test_many_categories_still_give_each_bar_a_visible_width() -> None:
    """Hundreds of categories make bars at least two units wide (one drawn) rather than nothing."""
    chart = bar_chart("c", "Many", [str(i) for i in range(500)], {"v": [1] * 500})
    assert len(chart.bars) == 500
    assert min(b.width for b in chart.bars) >= 1


def render(chart: Chart) -> str:
    """The analytics page's section of *chart*, rendered by the console's own (autoescaping) templates."""
    html = ENV.get_template("analytics.html").render(request=None, session=None, notices=[], path="/analytics", charts=[chart],
                                                     journeys=[], chosen="")
    return html[html.index('<div class="charts">'):]


def test_labels_are_escaped_in_the_svg_and_the_table() -> None:
    """A category or series named with markup (a journey or step name, a guardrail id) is text everywhere the page shows it:
    the SVG's labels and tooltips, the legend and the table."""
    hostile = '<script>alert("x")</script>&'
    chart = bar_chart("denials", "Denied <b>sends</b>", [hostile], {'deny"ed': [3]}, note="from <i>decisions</i>")
    html = render(chart)
    assert "<script>" not in html and "<b>" not in html and "<i>" not in html
    assert "&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt;&amp;" in html  # the table's row and the tooltip
    assert 'deny&#34;ed' in html
    assert re.search(r"<title>&lt;script&gt;.*deny&#34;ed: 3</title>", html)


def test_an_empty_chart_says_so_instead_of_drawing() -> None:
    """An empty chart's section has its title and a no-data line, and no SVG."""
    html = render(bar_chart("holdout", "Conversion", [], {"converted": []}))
    assert "Conversion" in html and "No data yet." in html and "<svg" not in html
