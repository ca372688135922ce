"""Screenshot one section of an `oesir report` page in headless Chromium (the README's picture).

    oesir index examples/photos --index /tmp/demo-idx
    oesir report examples/spliced.jpg --index /tmp/demo-idx --out /tmp/demo-report
    python tools/report_screenshot.py /tmp/demo-report/001-spliced.html examples/report.png

Needs the test extra (playwright) and Chromium on PATH; nothing is downloaded.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from playwright.sync_api import sync_playwright

from oesir_cli.report import find_browser
from oesir_cli.report.pdf import QUIET_FLAGS


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("page", type=Path)
    ap.add_argument("out", type=Path)
    ap.add_argument("--section", default="summary", help="id of the section to capture")
    ap.add_argument("--width", type=int, default=1100)
    args = ap.parse_args()
    browser_path = find_browser()
    if browser_path is None:
        raise SystemExit("no Chromium on PATH (apt-get install chromium)")
    flags = [f for f in QUIET_FLAGS if f != "--headless"] + (["--no-sandbox"] if os.geteuid() == 0 else [])
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=browser_path, headless=True, args=flags)
        page = browser.new_page(viewport={"width": args.width, "height": 900})
        page.goto(args.page.resolve().as_uri(), wait_until="load")
        page.locator(f"#{args.section}").screenshot(path=str(args.out))
        browser.close()
    print(args.out)


if __name__ == "__main__":
    main()
