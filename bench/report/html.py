"""The report as one self-contained HTML page: inline CSS, inline SVG charts, no scripts.

Nothing on the page refers to another file or to the network, so it works offline and as a CI
artifact.
"""

from __future__ import annotations

import math
from html import escape

from bench.report.document import Chart, Report, Table

PALETTE = ["#4c78a8", "#f58518", "#54a24b", "#e45756", "#72b7b2", "#b279a2", "#eeca3b", "#9d755d"]

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 80em; padding: 0 1em;
       color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
h3 { font-size: 1.05em; margin-bottom: .3em; }
.warning { background: #fff4ce; border-left: 4px solid #e0a800; padding: .6em 1em; }
.note { color: #666; font-size: .9em; }
table { border-collapse: collapse; margin: .5em 0 1.5em; font-size: .9em; }
th, td { padding: .25em .7em; border-bottom: 1px solid #eee; text-align: left;
         white-space: nowrap; }
th { background: #f6f6f6; }
td.num, th.num { text-align: right; font-variant-numeric: tabular-nums; }
td.bar { position: relative; }
td.bar span.fill { position: absolute; right: 0; top: 15%; height: 70%; background: #dbe7f3;
                   z-index: -1; }
td.bar { z-index: 0; }
.ok, .good { color: #1a7f37; } .failed, .bad { color: #cf222e; } .skipped { color: #9a6700; }
.muted { color: #999; }
.charts { display: flex; flex-wrap: wrap; gap: 1.5em; }
figure { margin: 0; } figcaption { font-weight: 600; font-size: .9em; }
.legend { font-size: .8em; max-width: 26em; }
.legend span.swatch { display: inline-block; width: .8em; height: .8em; margin: 0 .3em 0 .8em; }
svg text { font-size: 10px; fill: #555; }
"""

# Chart geometry (SVG user units).
WIDTH, HEIGHT = 360, 200
LEFT, RIGHT, TOP, BOTTOM = 44, 12, 10, 34
PAD_X = 18  # keeps the first and last points off the axes


def _classes(*names: str) -> str:
    joined = " ".join(n for n in names if n)
    return f' class="{joined}"' if joined else ""


def _table(table: Table) -> list[str]:
    out = [f"<h3>{escape(table.title)}</h3>"] if table.title else []
    out.append("<table>")
    out.append(
        "<thead><tr>"
        + "".join(
            f"<th{_classes('num' if c.numeric else '')}>{escape(c.header)}</th>"
            for c in table.columns
        )
        + "</tr></thead>"
    )
    out.append("<tbody>")
    for row in table.rows:
        # Only measured values carry a number, so the key columns never get a bar.
        peak = max((v.number for v in row if v.number is not None), default=0.0)
        cells = []
        for column, value in zip(table.columns, row, strict=True):
            text = escape(value.text)
            bar = table.bars and value.number is not None and peak > 0
            classes = _classes("num" if column.numeric else "", "bar" if bar else "", value.tone)
            if bar:
                width = 100.0 * (value.number or 0.0) / peak
                text = f'<span class="fill" style="width:{width:.1f}%"></span>{text}'
            cells.append(f"<td{classes}>{text}</td>")
        out.append("<tr>" + "".join(cells) + "</tr>")
    out.append("</tbody></table>")
    return out


def _nice_step(peak: float) -> float:
    raw = peak / 4
    magnitude = 10.0 ** math.floor(math.log10(raw))
    return next(m * magnitude for m in (1, 2, 2.5, 5, 10) if m * magnitude >= raw)


def _tick(value: float) -> str:
    return f"{value / 1000:g}k" if value >= 1000 else f"{value:g}"


def _chart(chart: Chart, colors: dict[str, str]) -> str:
    values = [v for _, series in chart.series for v in series if v is not None]
    peak = max(values, default=0.0)
    if peak <= 0:
        return ""
    step = _nice_step(peak)
    top = step * math.ceil(peak / step)
    plot_w, plot_h = WIDTH - LEFT - RIGHT - 2 * PAD_X, HEIGHT - TOP - BOTTOM
    n = len(chart.x_values)

    def x(i: int) -> float:
        return LEFT + PAD_X + (plot_w / 2 if n == 1 else plot_w * i / (n - 1))

    def y(v: float) -> float:
        return TOP + plot_h * (1 - v / top)

    parts = [
        f'<svg viewBox="0 0 {WIDTH} {HEIGHT}" width="{WIDTH}" height="{HEIGHT}" role="img" '
        f'aria-label="{escape(chart.title)}">'
    ]
    tick = 0.0
    while tick <= top + step / 2:
        parts.append(
            f'<line x1="{LEFT}" x2="{WIDTH - RIGHT}" y1="{y(tick):.1f}" y2="{y(tick):.1f}" '
            'stroke="#e5e5e5"/>'
            f'<text x="{LEFT - 4}" y="{y(tick) + 3:.1f}" text-anchor="end">{_tick(tick)}</text>'
        )
        tick += step
    for i, label in enumerate(chart.x_values):
        parts.append(
            f'<text x="{x(i):.1f}" y="{HEIGHT - BOTTOM + 14}" text-anchor="middle">'
            f"{escape(label)}</text>"
        )
    parts.append(
        f'<text x="{LEFT + PAD_X + plot_w / 2:.1f}" y="{HEIGHT - 4}" text-anchor="middle">'
        f"{escape(chart.x_label)} ({escape(chart.y_label)} on the vertical axis)</text>"
    )
    for label, series in chart.series:
        color = colors[label]
        points = [(i, v) for i, v in enumerate(series) if v is not None]
        # Lines join consecutive measured levels only; a gap stays a gap.
        run: list[str] = []
        for j, (i, v) in enumerate(points):
            run.append(f"{x(i):.1f},{y(v):.1f}")
            last = j + 1 == len(points) or points[j + 1][0] != i + 1
            if last:
                if len(run) > 1:
                    parts.append(
                        f'<polyline points="{" ".join(run)}" fill="none" stroke="{color}" '
                        'stroke-width="2"/>'
                    )
                run = []
        for i, v in points:
            parts.append(
                f'<circle cx="{x(i):.1f}" cy="{y(v):.1f}" r="3" fill="{color}">'
                f"<title>{escape(label)}: {escape(chart.x_label)} {escape(chart.x_values[i])}, "
                f"{v:.0f} {escape(chart.y_label)}</title></circle>"
            )
    parts.append("</svg>")
    legend = "".join(
        f'<span class="swatch" style="background:{colors[label]}"></span>{escape(label)}'
        for label, _ in chart.series
    )
    return (
        f"<figure><figcaption>{escape(chart.title)}</figcaption>{''.join(parts)}"
        f'<div class="legend">{legend}</div></figure>'
    )


def render_html(report: Report) -> str:
    """`report` as a self-contained HTML page (report.html): works offline, no scripts."""
    body = [f"<h1>{escape(report.title)}</h1>", f"<p>{escape(report.summary)}</p>"]
    body += [
        f'<p class="warning"><strong>Warning:</strong> {escape(w)}</p>' for w in report.warnings
    ]
    # One colour per series label across the page, so a cell looks the same in every chart.
    labels = dict.fromkeys(
        label for s in report.sections for chart in s.charts for label, _ in chart.series
    )
    colors = {label: PALETTE[k % len(PALETTE)] for k, label in enumerate(labels)}
    for section in report.sections:
        body.append(f"<h2>{escape(section.title)}</h2>")
        body += [f"<p>{escape(p)}</p>" for p in section.paragraphs]
        charts = [c for c in (_chart(chart, colors) for chart in section.charts) if c]
        if charts:
            body.append('<div class="charts">' + "".join(charts) + "</div>")
        for table in section.tables:
            body += _table(table)
        body += [f'<p class="note">{escape(n)}</p>' for n in section.notes]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(report.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
