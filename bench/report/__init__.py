"""Reports over many results: collect them, build the report once, then draw it as a terminal
view, Markdown or HTML.

`collect` reads result files; `build` merges each cell's repetitions and turns the results into
one neutral `Report` (sections of tables, and charts only the HTML page draws) that every
renderer draws, so the three formats carry the same content and the costly part (resampling for
the noise intervals, change points over a history) runs once. Renderers return values and
never print or write files; `files` is the one module that reads results and writes the report's
files, for the `report` command and the matrix alike.
"""

from bench.report.aggregate import collect
from bench.report.document import Report
from bench.report.html import render_html
from bench.report.markdown import render_markdown
from bench.report.tables import build
from bench.report.terminal import render_terminal

__all__ = ["Report", "build", "collect", "render_html", "render_markdown", "render_terminal"]
