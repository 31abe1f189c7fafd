"""Reports over many results: collect them, then render a terminal view, Markdown or HTML.

`collect` reads result files; `tables.build` turns results into neutral tables that every
renderer shows, so the three formats carry the same content. Renderers return values and never
print or write files: the caller decides where the output goes.
"""

from bench.report.aggregate import collect
from bench.report.html import render_html
from bench.report.markdown import render_markdown
from bench.report.terminal import render_terminal

__all__ = ["collect", "render_html", "render_markdown", "render_terminal"]
