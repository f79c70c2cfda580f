"""Check an analysis report in a real browser: headless Chromium at a laptop width.

    python bench/report_layout.py outputs/analysis/<date>/<time>/report.html [--width 1280]

Renders the page, screenshots it next to the report (``report_<width>px.png``), and measures in
the page itself whether anything is wider than the window (the page, a table outside its
scrolling wrapper, a figure). Exits 1, listing the culprits, on horizontal overflow.

Needs Chromium (Debian: ``apt-get install chromium``; ``--chromium PATH`` otherwise). Not a
test: CI machines have no browser.
"""

from __future__ import annotations

import argparse
import html
import json
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

# Runs in the page after layout; writes its findings into the DOM, which --dump-dom returns.
PROBE = """
<script>
window.addEventListener("load", () => {
  const width = document.documentElement.clientWidth;
  const wide = [];
  for (const el of document.querySelectorAll("body *")) {
    const box = el.getBoundingClientRect();
    if (box.right > width + 1 && !el.closest(".table-wrap")) {
      wide.push(el.tagName.toLowerCase() + (el.id ? "#" + el.id : "") + " right=" +
                Math.round(box.right));
    }
  }
  const out = document.createElement("pre");
  out.id = "layout-probe";
  out.textContent = JSON.stringify({
    viewport: width, page: document.documentElement.scrollWidth, wide: wide.slice(0, 20),
    scrolling_tables: [...document.querySelectorAll(".table-wrap")]
      .filter(w => w.scrollWidth > w.clientWidth + 1).length,
    toc_links: document.querySelectorAll("h2#contents + ul a").length,
    broken_links: [...document.querySelectorAll('a[href^="#"]')]
      .filter(a => !document.getElementById(a.getAttribute("href").slice(1))).length,
  });
  document.body.appendChild(out);
});
</script>
"""


def chromium(path: str | None) -> str:
    found = path or shutil.which("chromium") or shutil.which("chromium-browser")
    if not found:
        sys.exit("no Chromium found: apt-get install chromium, or pass --chromium PATH")
    return found


def run(browser: str, args: list[str]) -> str:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars"]
    result = subprocess.run([browser, *flags, *args], capture_output=True, text=True,
                            timeout=120)  # fmt: skip
    if result.returncode != 0:
        sys.exit(f"chromium failed: {result.stderr[-1000:]}")
    return result.stdout


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("--width", type=int, default=1280)
    parser.add_argument("--height", type=int, default=2400, help="screenshot height")
    parser.add_argument("--chromium", default=None)
    args = parser.parse_args()
    browser = chromium(args.chromium)
    page = args.report.read_text()
    with tempfile.TemporaryDirectory() as tmp:
        probed = Path(tmp) / "probed.html"
        probed.write_text(page.replace("</body>", PROBE + "</body>"))
        dom = run(browser, [f"--window-size={args.width},900", "--virtual-time-budget=5000",
                            "--dump-dom", probed.as_uri()])  # fmt: skip
    match = re.search(r'<pre id="layout-probe">(.*?)</pre>', dom, re.S)
    if not match:
        sys.exit("the probe did not run (no layout-probe element in the DOM)")
    found = json.loads(html.unescape(match.group(1)))
    shot = args.report.with_name(f"report_{args.width}px.png")
    run(browser, [f"--window-size={args.width},{args.height}", f"--screenshot={shot}",
                  args.report.resolve().as_uri()])  # fmt: skip
    print(f"viewport {found['viewport']} px, page {found['page']} px wide; "
          f"{found['scrolling_tables']} table(s) scroll inside the page; "
          f"{found['toc_links']} contents links, {found['broken_links']} broken; "
          f"screenshot {shot}")  # fmt: skip
    problems = []
    if found["page"] > found["viewport"] + 1:
        problems.append(f"the page is {found['page']} px wide")
    if found["wide"]:
        problems.append("wider than the window: " + "; ".join(found["wide"]))
    if found["broken_links"]:
        problems.append(f"{found['broken_links']} in-page links lead nowhere")
    if problems:
        print("LAYOUT PROBLEMS: " + " | ".join(problems))
        sys.exit(1)
    print("no horizontal overflow")


if __name__ == "__main__":
    main()
