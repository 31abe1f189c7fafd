"""Tests of bench.report.charts: which charts the HTML page has, what they are drawn from, and
that each is a small inline SVG that refers to nothing outside the page.

tests/resources/report_repeat holds a run with repetitions and HdrHistograms (its README says
how it was made); tests/resources/report_scenarios two flow-runs results.
"""

from __future__ import annotations

import re

import pytest
from hdrh.histogram import HdrHistogram

from bench.report import build, collect, render_html, render_markdown
from bench.report.aggregate import merge_repetitions
from bench.report.charts import (
    PALETTE,
    draw_svg,
    percentile_spectrum,
    spectrum_chart,
    y_top,
)
from bench.report.document import Chart, Series
from bench.results import Result
from tests.helpers import REPORT_RUN, RESOURCES

REPEAT = RESOURCES / "report_repeat"
SCENARIOS = RESOURCES / "report_scenarios"
MAX_SVG_CHARS = 40_000


@pytest.fixture(scope="module")
def repeated() -> list[Result]:
    found, warnings = collect([REPEAT])
    assert warnings == [] and len(found) == 6
    return found


@pytest.fixture(scope="module")
def page(repeated: list[Result]) -> str:
    return render_html(build(repeated))


def svgs(page: str) -> dict[str, str]:
    """Every <svg> of the page by its accessible name."""
    found = {}
    for match in re.finditer(r'<svg [^>]*aria-label="([^"]*)".*?</svg>', page, re.S):
        assert match[1] not in found, f"two charts named {match[1]}"
        found[match[1]] = match[0]
    return found


def test_the_page_has_the_expected_charts(page: str) -> None:
    expected = ["Total rps by concurrency"]
    for endpoint, level in (("GET health", 4), ("GET flow", 4), ("POST flow_runs", 1)):
        expected += [
            f"{endpoint}: rps",
            f"{endpoint}: latency by percentile, c={level}",
            f"{endpoint}: latency against rps",
        ]
    expected.append("zig / python: the total rate&#x27;s ratio, round by round")
    charts = svgs(page)
    assert list(charts) == expected
    assert page.count("<svg") == len(expected)
    for name, svg in charts.items():
        assert f"<title>{name}</title>" in svg
        assert f"<figcaption>{name}</figcaption><svg" in page


def test_spectra_use_the_highest_level_every_cell_measured(page: str) -> None:
    charts = svgs(page)
    # zig's POST flow_runs at c=4 answered nothing: no histogram, so both are drawn at c=1
    assert "POST flow_runs: latency by percentile, c=1" in charts
    assert "c=4: the highest concurrency every cell measured; a line ends" in page
    spectrum = charts["GET health: latency by percentile, c=4"]
    for tick in ("50%", "90%", "99%", "99.9%", "99.99%"):
        assert f">{tick}</text>" in spectrum, tick
    assert ">percentile</text>" in spectrum and ">latency (ms)</text>" in spectrum


def test_the_page_stays_self_contained_and_small(page: str) -> None:
    assert "<script" not in page
    assert "http://" not in page and "https://" not in page  # no namespaces, no metadata
    assert "<metadata" not in page and "<?xml" not in page and "<!DOCTYPE svg" not in page
    assert not re.search(r"url\((?!#)", page)
    for ref in re.findall(r'(?:href|src)="([^"]*)"', page):
        assert ref.startswith("#"), ref
    ids = re.findall(r'\bid="([^"]*)"', page)
    assert len(ids) == len(set(ids)), "element ids repeat across charts"
    for name, svg in svgs(page).items():
        assert len(svg) < MAX_SVG_CHARS, (name, len(svg))
        for ref in re.findall(r'href="#([^"]*)"|url\(#([^)]*)\)', svg):
            assert f'id="{ref[0] or ref[1]}"' in svg  # every reference resolves in its chart


def test_one_colour_per_cell_across_the_page(page: str) -> None:
    python, zig = PALETTE[0], PALETTE[1]
    legend = page.split('<p class="legend">', 2)[1]
    assert f'background:{python}"></span>python-sqlite-memory' in legend
    assert f'background:{zig}"></span>zig-sqlite-memory' in legend
    for name, svg in svgs(page).items():
        if name.startswith("zig / python"):  # the pair's chart: zig's ratios to python
            assert f"stroke: {zig}" in svg and f"stroke: {python}" not in svg
            continue
        assert f"stroke: {python}" in svg and f"stroke: {zig}" in svg, name


def test_markdown_has_no_charts(repeated: list[Result]) -> None:
    text = render_markdown(build(repeated))
    assert "<svg" not in text and "latency by percentile" not in text


def test_scenario_charts_from_their_histograms() -> None:
    results, _ = collect([SCENARIOS])
    charts = svgs(render_html(build(results)))
    assert [name for name in charts if name.startswith("flow run")] == [
        "flow run, 10 tasks: completed/s",
        "flow run, 10 tasks: duration by percentile, c=1",
        "flow run, 10 tasks: duration against completed/s",
    ]


def test_no_spectrum_without_histograms() -> None:
    # The report resource keeps no histograms: rates and latency against rps only.
    results, _ = collect([REPORT_RUN])
    names = list(svgs(render_html(build(results))))
    assert names and not any("by percentile" in name for name in names)
    assert "GET flow: latency against rps" in names


def histogram(values_us: list[int]) -> str:
    hist = HdrHistogram(1, 600_000_000, 3)
    for v in values_us:
        hist.record_value(v)
    return hist.encode().decode("ascii")


def test_percentile_spectrum_reads_the_histogram() -> None:
    values = list(range(1000, 11000))  # 1.000 .. 10.999 ms, 10,000 values
    spectrum = percentile_spectrum(histogram(values), points=100)
    assert len(spectrum) == 100
    percentiles = [p for p, _ in spectrum]
    latencies = [ms for _, ms in spectrum]
    assert percentiles == sorted(percentiles) and latencies == sorted(latencies)
    assert percentiles[0] == 0 and latencies[0] == pytest.approx(1.0, rel=1e-3)
    # the last point: 1 - 1/count, at the largest value recorded
    assert spectrum[-1] == (pytest.approx(99.99), pytest.approx(10.999, rel=1e-3))
    at_50 = min(spectrum, key=lambda point: abs(point[0] - 50))
    assert at_50[1] == pytest.approx(1 + 10 * at_50[0] / 100, rel=2e-3)
    assert percentile_spectrum(histogram([])) == []


def test_spectrum_ticks_stop_where_the_count_does() -> None:
    chart = spectrum_chart("x", 1, [("a", histogram(list(range(1, 100))))], "")
    assert [label for _, label in chart.x_ticks] == ["50%", "90%"]  # 99 values: to 98.99%
    chart = spectrum_chart("x", 1, [("a", histogram(list(range(1, 101))))], "")
    assert [label for _, label in chart.x_ticks] == ["50%", "90%", "99%"]


def test_draw_svg_gaps_and_names() -> None:
    chart = Chart(
        'a "quoted" <name>',
        "concurrency",
        "rps",
        [Series("cell", [(1.0, 10.0), (4.0, None), (16.0, 30.0)])],
        x_scale="log",
        x_ticks=[(1.0, "1"), (4.0, "4"), (16.0, "16")],
    )
    svg = draw_svg(chart, {"cell": "#123456"}, salt="t")
    assert svg.startswith('<svg width="') and svg.endswith("</svg>")
    assert 'aria-label="a &quot;quoted&quot; &lt;name&gt;"' in svg
    assert "<title>a &quot;quoted&quot; &lt;name&gt;</title>" in svg
    assert "stroke: #123456" in svg
    assert draw_svg(chart, {"cell": "#123456"}, salt="t") == svg  # no dates, no random ids


def test_a_single_levels_highest_point_sits_under_a_labelled_tick() -> None:
    chart = Chart("GET health", "concurrency", "rps", [Series("cell", [(4.0, 4589.0)])], "log")
    svg = draw_svg(chart, {"cell": "#123456"}, salt="t")
    assert ">5k<" in svg  # matplotlib's own limit hugged the point, its last tick 4k
    assert [y_top(v) for v in (4589, 4800, 100, 0.3)] == [5000, 6000, 125, 0.32]


def test_merged_histograms_draw_the_merged_spectrum(repeated: list[Result]) -> None:
    """The spectrum of a repeated cell is drawn from its counted repetitions only."""
    python = next(r for r in merge_repetitions(repeated) if r.cell.name == "python-sqlite-memory")
    health = next(e for e in python.endpoints if (e.name, e.concurrency) == ("GET health", 4))
    assert health.hdr is not None
    counted = [
        e
        for r in repeated
        if r.cell.name == "python-sqlite-memory" and r.discarded is None
        for e in r.endpoints
        if (e.name, e.concurrency) == ("GET health", 4)
    ]
    merged = HdrHistogram.decode(health.hdr)
    assert merged.get_total_count() == sum(e.successes for e in counted)
    assert percentile_spectrum(health.hdr)[-1][1] == pytest.approx(
        max(HdrHistogram.decode(e.hdr).get_max_value() for e in counted if e.hdr) / 1000
    )
