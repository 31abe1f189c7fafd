"""report.html in a real browser (Debian's headless Chromium, which .ci/run installs): no
script error, nothing wider than a 1280 px window (a wide table scrolls in its own box, never
the page), and every chart drawn with data."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.helpers import RESOURCES, bench

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed")

# Runs once the page has loaded; its findings go into the page, which --dump-dom prints.
CHECK = """<script>
window.__errors = [];
window.addEventListener('error', e => window.__errors.push(String(e.message)));
window.addEventListener('load', () => {
  const width = document.documentElement.clientWidth;
  const name = e => (e.querySelector('figcaption') || e.previousElementSibling || e)
    .textContent.slice(0, 80);
  const wide = [...document.querySelectorAll('div.table, figure, .charts')]
    .filter(e => e.getBoundingClientRect().right > width + 1).map(name);
  const charts = [...document.querySelectorAll('figure svg')];
  const out = document.createElement('pre');
  out.id = 'layout-check';
  out.textContent = JSON.stringify({width, scroll: document.documentElement.scrollWidth, wide,
    charts: charts.length, empty: charts.filter(s => !s.querySelector('path, circle')).length,
    errors: window.__errors});
  document.body.appendChild(out);
});
</script>"""


def test_the_report_fits_a_1280_px_window_with_every_chart_drawn(tmp_path: Path) -> None:
    runs = ["report/20261126T164000Z-3f2a", "report_scenarios", "report_events",
            "report_repeat", "report_scale"]  # fmt: skip
    out = bench("report", *(str(RESOURCES / r) for r in runs), "--out", "out", cwd=tmp_path)
    assert out.returncode == 0, out.stderr
    page = (tmp_path / "out" / "report.html").read_text()
    assert "<script" not in page  # the report itself runs nothing
    checked = tmp_path / "checked.html"
    checked.write_text(page.replace("</head>", CHECK + "</head>", 1))
    assert CHROMIUM is not None
    dom = subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--window-size=1280,900",
         f"--user-data-dir={tmp_path / 'profile'}", "--virtual-time-budget=5000",
         "--dump-dom", checked.as_uri()],
        capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    found = re.search(r'<pre id="layout-check">(.*?)</pre>', dom.stdout)
    assert found, dom.stderr[-2000:]
    layout = json.loads(found.group(1).replace("&quot;", '"').replace("&amp;", "&"))
    assert layout["errors"] == [], layout
    assert layout["scroll"] <= layout["width"], layout  # the page never scrolls sideways
    assert layout["wide"] == [], layout
    assert layout["charts"] >= 20 and layout["empty"] == 0, layout
