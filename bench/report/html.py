"""The report as one self-contained HTML page: inline CSS, inline SVG charts (drawn by
`bench.report.charts`), no scripts.

Nothing on the page refers to another file or to the network, so it works offline and as a CI
artifact.
"""

from __future__ import annotations

from html import escape

from bench.report.charts import color_map, draw_svg
from bench.report.document import Chart, Picture, Report, Table

CSS = """
body { font-family: system-ui, sans-serif; margin: 2em auto; max-width: 80em; padding: 0 1em;
       color: #222; }
h1 { font-size: 1.6em; } h2 { margin-top: 2em; border-bottom: 1px solid #ddd; }
h3 { font-size: 1.05em; margin-bottom: .3em; }
.warning { background: #fff4ce; border-left: 4px solid #e0a800; padding: .6em 1em; }
.note { color: #666; font-size: .9em; }
div.table { overflow-x: auto; max-width: 100%; margin: .5em 0 1.5em; }
table { border-collapse: collapse; font-size: .9em; }
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
.charts { display: flex; flex-wrap: wrap; gap: 1em 1.5em; }
figure { margin: 0; max-width: 400px; } figcaption { font-weight: 600; font-size: .9em; }
figure .note { margin: 0; font-size: .8em; }
.legend { font-size: .85em; }
.legend span.swatch { display: inline-block; width: .8em; height: .8em; margin: 0 .3em 0 .8em; }
figure svg * { stroke-linejoin: round; stroke-linecap: butt; }
figure.picture { max-width: none; margin: 0 0 1.5em; }
figure.picture svg { display: block; width: 100%; height: auto; max-width: 1200px; }
"""


def _classes(*names: str) -> str:
    joined = " ".join(n for n in names if n)
    return f' class="{joined}"' if joined else ""


def _table(table: Table) -> list[str]:
    out = [f"<h3>{escape(table.title)}</h3>"] if table.title else []
    # a table of many cells scrolls sideways in its own box, never the page
    out.append('<div class="table"><table>')
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
    out.append("</tbody></table></div>")
    return out


def _figure(chart: Chart, colors: dict[str, str], index: int) -> str:
    note = f'<p class="note">{escape(chart.note)}</p>' if chart.note else ""
    svg = draw_svg(chart, colors, salt=f"chart{index}")
    return f"<figure><figcaption>{escape(chart.title)}</figcaption>{svg}{note}</figure>"


def _picture(picture: Picture) -> str:
    """An SVG drawn elsewhere, inline (it is trusted: prefect-bench drew it)."""
    link = f'<p class="note">{escape(picture.link)}</p>' if picture.link else ""
    caption = f"<figcaption>{escape(picture.caption)}</figcaption>"
    return f'<figure class="picture">{caption}{picture.svg}{link}</figure>'


def _legend(keys: list[str], colors: dict[str, str]) -> str:
    return (
        '<p class="legend">'
        + "".join(
            f'<span class="swatch" style="background:{colors[key]}"></span>{escape(key)}'
            for key in keys
        )
        + "</p>"
    )


def render_html(report: Report) -> str:
    """`report` as a self-contained HTML page (report.html): works offline, no scripts."""
    body = [f"<h1>{escape(report.title)}</h1>", f"<p>{escape(report.summary)}</p>"]
    body += [
        f'<p class="warning"><strong>Warning:</strong> {escape(w)}</p>' for w in report.warnings
    ]
    # One colour per cell across the page, so a cell looks the same in every chart.
    colors = color_map(
        series.key for s in report.sections for chart in s.charts for series in chart.series
    )
    index = 0
    for section in report.sections:
        body.append(f"<h2>{escape(section.title)}</h2>")
        body += [f"<p>{escape(p)}</p>" for p in section.paragraphs]
        charts = [chart for chart in section.charts if chart.series]
        if charts:
            keys = list(dict.fromkeys(series.key for c in charts for series in c.series))
            body.append(_legend(keys, colors))
            figures = []
            for chart in charts:
                figures.append(_figure(chart, colors, index))
                index += 1
            body.append('<div class="charts">' + "".join(figures) + "</div>")
        for table in section.tables:
            body += _table(table)
        body += [_picture(picture) for picture in section.pictures]
        body += [f'<p class="note">{escape(n)}</p>' for n in section.notes]
    return (
        "<!DOCTYPE html>\n"
        '<html lang="en">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{escape(report.title)}</title>\n<style>{CSS}</style>\n</head>\n<body>\n"
        + "\n".join(body)
        + "\n</body>\n</html>\n"
    )
