"""The report's charts: what each one shows (results in, `document.Chart` out, while the report
is built) and how the HTML page draws it (matplotlib, one small inline SVG per chart).

Charts of endpoints and scenarios, each with one line per cell: the rate by concurrency level;
the latency spectrum at one level (percentiles on a 1 / (1 - p) scale, HdrHistogram style),
from the histograms the results keep; and latency (p50, p99) against the rate over the levels.
"""

from __future__ import annotations

import io
import math
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from html import escape
from typing import Any

from hdrh.histogram import HdrHistogram

from bench.report.aggregate import measurements, scenario_measurements
from bench.report.document import Chart, Series
from bench.results import LatencyMs, Result

# tab10, matplotlib's default cycle: ten colours told apart at a glance.
PALETTE = [
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
]
# Percentiles labelled on a spectrum's axis, as far as its histograms reach.
PERCENTILE_TICKS = (50.0, 90.0, 99.0, 99.9, 99.99, 99.999)
SPECTRUM_NOTE = (
    "c={level}: the highest concurrency every cell measured{missing}; a line ends at the "
    "largest value recorded."
)
LATENCY_NOTE = "Solid: p50, dashed: p99; points labelled by concurrency."

# -- what the charts show ----------------------------------------------------------------------

# Points of a latency spectrum: enough for a smooth line, few enough for a small SVG.
SPECTRUM_POINTS = 100


def percentile_spectrum(hdr: str, points: int = SPECTRUM_POINTS) -> list[tuple[float, float]]:
    """(percentile, latency ms) of an encoded µs histogram at `points` percentiles spread evenly
    on the 1/(1 - p) scale, from 0 to 1 - 1/count (the largest a count resolves), where the
    last point is the largest value recorded. Empty for an empty histogram."""
    hist = HdrHistogram.decode(hdr)
    count = hist.get_total_count()
    if count == 0:
        return []
    # p = 1 - 10^-k for k evenly from 0 to log10(count): evenly spaced on the chart's axis.
    top = math.log10(count)
    steps = max(points - 1, 1)
    spectrum = []
    for i in range(steps):
        p = 100 * (1 - 10 ** (-top * i / steps))
        spectrum.append((p, hist.get_value_at_percentile(p) / 1000))
    spectrum.append((100 * (1 - 1 / count), hist.get_max_value() / 1000))
    return spectrum


_Point = tuple[int, float, LatencyMs | None]  # (concurrency, rate, latency summary)


def levels_chart(
    title: str, y_label: str, levels: Sequence[int], lines: Sequence[tuple[str, list[float | None]]]
) -> Chart:
    """A rate (or any figure) by concurrency level, one line per (key, values by level)."""
    return Chart(
        title,
        "concurrency",
        y_label,
        [Series(key, list(zip(map(float, levels), values, strict=True))) for key, values in lines],
        x_scale="log",
        x_ticks=[(float(c), str(c)) for c in levels],
    )


def spectrum_chart(title: str, level: int, lines: Sequence[tuple[str, str]], missing: str) -> Chart:
    """Latency by percentile, one line per (key, encoded histogram); `missing` names the cells
    left out (they did not measure `level`)."""
    series = [
        Series(key, [(p, ms) for p, ms in percentile_spectrum(hdr)], markers=False)
        for key, hdr in lines
    ]
    top = max((p for s in series for p, _ in s.points), default=0.0)
    return Chart(
        title,
        "percentile",
        "latency (ms)",
        series,
        x_scale="percentile",
        y_scale="log",
        x_ticks=[(p, f"{p:g}%") for p in PERCENTILE_TICKS if p <= top],
        note=SPECTRUM_NOTE.format(
            level=level, missing=f" (not measured by {missing})" if missing else ""
        ),
    )


def latency_chart(title: str, rate_label: str, lines: Sequence[tuple[str, list[_Point]]]) -> Chart:
    """p50 and p99 latency against the rate over the levels, for each (key, points)."""
    series = []
    for key, points in lines:
        timed = [(c, rate, lat) for c, rate, lat in points if lat is not None and rate > 0]
        if not timed:
            continue
        series.append(
            Series(
                key,
                [(rate, lat.p50) for _, rate, lat in timed],
                label="p50",
                point_labels=[str(c) for c, _, _ in timed],
            )
        )
        series.append(
            Series(key, [(rate, lat.p99) for _, rate, lat in timed], label="p99", style="dashed")
        )
    return Chart(
        title, rate_label, "latency (ms)", series, x_scale="log", y_scale="log", note=LATENCY_NOTE
    )


def _spectrum_level(levels: Sequence[set[int]]) -> int | None:
    """The highest level every one measured; else the highest any did."""
    if not levels or not any(levels):
        return None
    common = set.intersection(*levels)
    return max(common) if common else max(set.union(*levels))


@dataclass(frozen=True)
class _Figures:
    """How the charts of one kind of measurement read it, and what they call its parts."""

    rate: Callable[[Any], float]
    latency: Callable[[Any], LatencyMs | None]
    hdr: Callable[[Any], str | None]
    rate_title: str  # "rps", "completed/s"
    rate_label: str  # the rate axis
    latency_title: str  # "latency", "duration"


_ENDPOINT = _Figures(
    lambda e: e.rps, lambda e: e.latency_ms, lambda e: e.hdr, "rps", "rps", "latency"
)


def _charts(
    found: Sequence[Mapping[tuple[str, int], Any]], labels: Sequence[str], how: _Figures
) -> list[Chart]:
    """The charts of every measured name (endpoint, scenario), its cells as lines."""
    charts = []
    for name in dict.fromkeys(name for m in found for name, _ in m):
        mine = [
            (label, {c: x for (n, c), x in sorted(m.items()) if n == name})
            for label, m in zip(labels, found, strict=True)
        ]
        mine = [(label, by_level) for label, by_level in mine if by_level]
        levels = sorted({c for _, by_level in mine for c in by_level})
        charts.append(
            levels_chart(
                f"{name}: {how.rate_title}",
                how.rate_label,
                levels,
                [
                    (label, [how.rate(x) if (x := by_level.get(c)) else None for c in levels])
                    for label, by_level in mine
                ],
            )
        )
        hdrs = [
            (label, {c: h for c, x in by_level.items() if (h := how.hdr(x))})
            for label, by_level in mine
        ]
        level = _spectrum_level([set(h) for _, h in hdrs if h])
        if level is not None:
            charts.append(
                spectrum_chart(
                    f"{name}: {how.latency_title} by percentile, c={level}",
                    level,
                    [(label, h[level]) for label, h in hdrs if level in h],
                    ", ".join(label for label, h in hdrs if h and level not in h),
                )
            )
        latency = latency_chart(
            f"{name}: {how.latency_title} against {how.rate_title}",
            how.rate_label,
            [
                (label, [(c, how.rate(x), how.latency(x)) for c, x in by_level.items()])
                for label, by_level in mine
            ],
        )
        if latency.series:
            charts.append(latency)
    return charts


def endpoint_charts(results: Sequence[Result], labels: Sequence[str]) -> list[Chart]:
    """For each endpoint: rps by level, its latency spectrum, latency against rps."""
    return _charts([measurements(r) for r in results], labels, _ENDPOINT)


def scenario_charts(results: Sequence[Result], labels: Sequence[str], unit: str) -> list[Chart]:
    """For each scenario: completed per second by level (in `unit`), the spectrum of its
    durations, its duration against its rate."""
    how = _Figures(
        lambda s: s.per_s,
        lambda s: s.duration_ms,
        lambda s: s.hdr,
        "completed/s",
        unit,
        "duration",
    )
    return _charts([scenario_measurements(r) for r in results], labels, how)


# -- how the page draws them -------------------------------------------------------------------

# Figure size in inches (72 pt each; a browser shows a pt as 4/3 px): three charts to a row.
WIDTH_IN, HEIGHT_IN = 4.0, 2.7
FONT_PT = 7.5
RC = {
    "svg.fonttype": "none",  # text stays text: small, searchable, drawn in the page's font
    "font.size": FONT_PT,
    "font.family": "sans-serif",
    "axes.edgecolor": "#999999",
    "axes.labelcolor": "#444444",
    "xtick.color": "#666666",
    "ytick.color": "#666666",
    "axes.spines.top": False,
    "axes.spines.right": False,
}
_HEAD = re.compile(r"\A.*?<svg\b[^>]*>", re.S)
_METADATA = re.compile(r"<metadata>.*?</metadata>\s*", re.S)
# matplotlib's one style rule selects every element (*): on an HTML page that is every element
# of the page; the page's CSS sets the same for SVG content only.
_GLOBAL_STYLE = re.compile(r"<style[^>]*>\*\{[^}]*\}</style>\s*")
# Coordinates to 0.1 pt (finer is invisible), in geometry attributes only: never in text.
_GEOMETRY = re.compile(r'\b(d|x|y|transform)="([^"]*)"')
_DECIMALS = re.compile(r"(\d+\.\d)\d+")
_BREAKS = re.compile(r"\s*\n\s*")
# matplotlib names every group (figure_1, axes_1, ...) alike in every chart: ids that repeat on
# the page, and that nothing refers to (markers and clip paths have ids of their own, salted).
_GROUP_ID = re.compile(r'<g id="[^"]*"')
_SIZE = re.compile(r'width="([\d.]+)pt" height="([\d.]+)pt" viewBox="([^"]+)"')


def color_map(keys: Iterable[str]) -> dict[str, str]:
    """One colour per key, in order of first appearance (the palette wraps)."""
    return {key: PALETTE[i % len(PALETTE)] for i, key in enumerate(dict.fromkeys(keys))}


def _percentile_x(p: float) -> float:
    """1 / (1 - p): 0% at 1, 90% at 10, 99% at 100, ..."""
    return 1 / (1 - p / 100)


def _number(value: float, _pos: object = None) -> str:
    if value >= 1000:
        return f"{value / 1000:g}k"
    return f"{value:g}"


def y_top(highest: float) -> float:
    """A linear axis' top for data up to `highest` (> 0): the first round tick at least 5% above
    it, so the highest point and its label sit inside the chart under a labelled tick (matplotlib's
    own limit hugs a single level's point at the top edge, its last tick below it)."""
    from matplotlib.ticker import MaxNLocator

    ticks = MaxNLocator(nbins=5).tick_values(0, highest * 1.05)
    return float(next(t for t in ticks if t >= highest * 1.05))


def draw_svg(chart: Chart, colors: Mapping[str, str], salt: str) -> str:
    """`chart` as an inline SVG element (no XML prolog, metadata or external reference), its
    title as its accessible name; `salt` makes its element ids unique on the page."""
    # Imported here: matplotlib takes seconds to import, and only the HTML page needs it. No
    # pyplot: a Figure with its own SVG canvas leaves no global backend or figure state.
    import matplotlib
    from matplotlib.backends.backend_svg import FigureCanvasSVG
    from matplotlib.figure import Figure
    from matplotlib.ticker import FuncFormatter, LogLocator, MaxNLocator, NullLocator

    with matplotlib.rc_context({**RC, "svg.hashsalt": salt}):
        fig = Figure(figsize=(WIDTH_IN, HEIGHT_IN))
        # Fixed margins, room for tick labels of up to five characters: a layout engine
        # would fit them exactly but doubles the time a chart takes to draw.
        fig.subplots_adjust(left=0.16, right=0.97, top=0.96, bottom=0.17)
        FigureCanvasSVG(fig)
        ax = fig.add_subplot()
        percentile = chart.x_scale == "percentile"
        for series in chart.series:
            xs = [_percentile_x(x) if percentile else x for x, _ in series.points]
            ys = [float("nan") if y is None else y for _, y in series.points]
            color = colors[series.key]
            ax.plot(
                xs,
                ys,
                color=color,
                linestyle=series.style,
                linewidth=1.4 if series.style == "solid" else 1.1,
                marker="o" if series.markers else None,
                markersize=2.8,
            )
            for x, y, text in zip(xs, ys, series.point_labels, strict=False):
                if y == y:  # not NaN
                    ax.annotate(
                        text,
                        (x, y),
                        xytext=(3, 3),
                        textcoords="offset points",
                        fontsize=FONT_PT - 0.5,
                        color=color,
                    )
        if chart.x_scale != "linear":
            ax.set_xscale("log")
        if chart.x_ticks:
            ax.set_xticks(
                [_percentile_x(x) if percentile else x for x, _ in chart.x_ticks],
                [label for _, label in chart.x_ticks],
            )
            ax.xaxis.set_minor_locator(NullLocator())
        elif chart.x_scale == "log":
            ax.xaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
            ax.xaxis.set_major_formatter(FuncFormatter(_number))
            ax.xaxis.set_minor_locator(NullLocator())
        if chart.y_scale == "log":
            ax.set_yscale("log")
            # 1, 2, 5 per decade: a narrow range still gets labelled ticks; within a factor of
            # 3 (ratios near 1) even those are too few, so evenly spaced values instead
            low, high = ax.get_ylim()
            narrow = low > 0 and high / low < 3
            ax.yaxis.set_major_locator(
                MaxNLocator(nbins=5) if narrow else LogLocator(subs=(1.0, 2.0, 5.0))
            )
            ax.yaxis.set_minor_locator(NullLocator())
        else:
            highest = max(
                (y for s in chart.series for _, y in s.points if y is not None), default=0.0
            )
            ax.set_ylim(0, y_top(highest) if highest > 0 else None)
        ax.yaxis.set_major_formatter(FuncFormatter(_number))
        for mark in chart.marks:
            ax.axvline(mark.x, color="#777777", linestyle=":", linewidth=1)
            ax.annotate(
                mark.label,
                (mark.x, 1),
                xycoords=("data", "axes fraction"),
                xytext=(-2, -2),
                textcoords="offset points",
                rotation=90,
                ha="right",
                va="top",
                fontsize=FONT_PT - 1.5,
                color="#555555",
            )
        ax.grid(True, color="#e8e8e8", linewidth=0.6)
        ax.set_axisbelow(True)
        ax.set_xlabel(chart.x_label)
        ax.set_ylabel(chart.y_label)
        out = io.StringIO()
        fig.savefig(out, format="svg", metadata={"Date": None})
    return _inline(out.getvalue(), chart.title)


def _inline(svg: str, title: str) -> str:
    """matplotlib's SVG document as an element of the page: its own opening tag (size, role,
    accessible name, no namespaces: HTML puts <svg> in the SVG namespace itself), a <title>, no
    metadata, shorter numbers."""
    head = _HEAD.match(svg)
    size = _SIZE.search(head.group(0)) if head else None
    if head is None or size is None:
        raise ValueError("not an SVG document from matplotlib")
    width, height, view_box = size.groups()
    body = _GLOBAL_STYLE.sub("", _METADATA.sub("", svg[head.end() :]))
    body = _GEOMETRY.sub(lambda m: m[1] + '="' + _DECIMALS.sub(r"\1", m[2]) + '"', body)
    body = _BREAKS.sub(" ", _GROUP_ID.sub("<g", body)).strip()
    name = escape(title)
    return (
        f'<svg width="{width}pt" height="{height}pt" viewBox="{view_box}" role="img" '
        f'aria-label="{name}"><title>{name}</title>{body}'
    )
