"""`tokenyard report` opened in a real browser: headless Chromium lays the page out, a
measuring script (added to a copy of the page, never to the product) reports each plot's
box and how many of its marks the browser drew with a size, and a screenshot shows ink
inside every plot's box.

``make install`` runs scripts/install-chromium.sh (Debian's ``chromium``); without the
binary this test skips with the reason.
"""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from tokenyard.cli import main as cli

AUDIT = Path(__file__).parents[2] / "unit" / "accounting" / "data" / "audit-real-run.jsonl"
PLOTS = ("cost-vs-strongest", "spend-tenant", "spend-model", "share", "fallbacks", "difficulty")
WIDTH, HEIGHT = 1000, 5000

# Runs in the browser after layout: each plot's box in CSS pixels and its drawn marks.
MEASURE = """
<script>
window.addEventListener('load', () => {
  const out = {};
  for (const fig of document.querySelectorAll('figure[data-plot]')) {
    const svg = fig.querySelector('svg');
    const box = svg ? svg.getBoundingClientRect() : null;
    const marks = [...fig.querySelectorAll('.mark')];
    const drawn = marks.filter(m => { const b = m.getBBox(); return b.width > 0 || b.height > 0; });
    out[fig.dataset.plot] = {
      box: box ? [box.left + scrollX, box.top + scrollY, box.width, box.height] : null,
      marks: marks.length, drawn: drawn.length,
    };
  }
  const pre = document.createElement('pre');
  pre.id = 'measured';
  pre.textContent = JSON.stringify({dpr: devicePixelRatio, plots: out});
  document.body.appendChild(pre);
});
</script>
"""


def _chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    pytest.skip("chromium not found: run scripts/install-chromium.sh")


def _browser(binary: str, page: Path, *args: str) -> str:
    cmd = [
        binary,
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--hide-scrollbars",
        "--force-device-scale-factor=1",
        f"--window-size={WIDTH},{HEIGHT}",
        "--virtual-time-budget=5000",
        *args,
        page.as_uri(),
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    return done.stdout


def _ink(image: Image.Image, box: list[float]) -> float:
    """The share of pixels inside the box that are not the page's white."""
    left, top, width, height = (int(v) for v in box)
    region = image.convert("L").crop((left, top, left + width, top + height))
    counts = region.histogram()  # 256 bins of grey level
    return sum(counts[:235]) / max(1, sum(counts))


def test_report_renders_every_plot_in_a_real_browser(tmp_path: Path) -> None:
    binary = _chromium()
    page = tmp_path / "report.html"
    assert cli(["report", str(AUDIT), "-o", str(page)]) == 0
    measured_page = tmp_path / "measured.html"
    measured_page.write_text(page.read_text().replace("</body>", MEASURE + "</body>"))

    dom = _browser(binary, measured_page, "--dump-dom")
    assert '<pre id="measured">' in dom, dom[-2000:]
    raw = dom.split('<pre id="measured">', 1)[1].split("</pre>", 1)[0]
    measured: dict[str, Any] = json.loads(raw.replace("&quot;", '"').replace("&amp;", "&"))
    plots = measured["plots"]
    assert set(plots) == set(PLOTS)
    for key, plot in plots.items():
        assert plot["box"] and plot["box"][2] > 100 and plot["box"][3] > 20, (key, plot)
        assert plot["marks"] > 0 and plot["drawn"] == plot["marks"], (key, plot)

    shot = tmp_path / "report.png"
    _browser(binary, page, f"--screenshot={shot}")
    image = Image.open(shot)
    assert image.size == (WIDTH, HEIGHT)
    for key, plot in plots.items():
        assert plot["box"][1] + plot["box"][3] <= HEIGHT, f"{key} is below the screenshot"
        assert _ink(image, plot["box"]) > 0.01, f"{key}: nothing drawn in its box"
    # The page's blank margin really is blank: the ink test can fail.
    assert _ink(image, [0, 0, 20, 20]) == 0.0
