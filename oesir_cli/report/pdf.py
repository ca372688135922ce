"""Print a report page to PDF with headless Chromium, when it is installed (nothing is downloaded)."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from ..errors import OesirError

BROWSERS = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable")
PRINT_TIMEOUT_S = 120
# flags for a closed network and no profile: no update checks, no sync, no first-run pages
QUIET_FLAGS = (
    "--headless",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-extensions",
)


class PdfError(OesirError):
    """No PDF could be printed; the message is one line and says what to do."""


def find_browser() -> str | None:
    """$OESIR_CHROMIUM, else the first Chromium-family browser on PATH."""
    given = os.environ.get("OESIR_CHROMIUM")
    if given:
        return given if shutil.which(given) else None
    return next((found for name in BROWSERS if (found := shutil.which(name))), None)


def print_pdf(page: Path, pdf: Path, browser: str | None = None) -> None:
    """Print the HTML file `page` to `pdf` (A4, the page's own print styles, no browser header or footer)."""
    browser = browser or find_browser()
    if browser is None:
        raise PdfError(
            "--pdf needs Chromium, which is not installed (Debian: apt-get install chromium; "
            "or set OESIR_CHROMIUM to a Chromium or Chrome binary); the HTML report is written"
        )
    flags = list(QUIET_FLAGS)
    if hasattr(os, "geteuid") and os.geteuid() == 0:
        flags.append("--no-sandbox")  # Chromium refuses to start its sandbox as root
    with tempfile.TemporaryDirectory(prefix="oesir-chromium-") as profile:
        cmd = [
            browser,
            *flags,
            f"--user-data-dir={profile}",
            "--no-pdf-header-footer",
            f"--print-to-pdf={pdf}",
            page.resolve().as_uri(),
        ]
        try:
            run = subprocess.run(cmd, capture_output=True, timeout=PRINT_TIMEOUT_S, check=False)
        except subprocess.TimeoutExpired:
            raise PdfError(f"Chromium did not print {page.name} within {PRINT_TIMEOUT_S} s") from None
        except OSError as exc:
            raise PdfError(f"cannot run {browser}: {exc.strerror or exc}") from None
    if not pdf.is_file() or pdf.read_bytes()[:5] != b"%PDF-":
        last = (run.stderr.decode("utf-8", "replace").strip().splitlines() or ["no message"])[-1]
        raise PdfError(f"Chromium did not print {page.name} (exit {run.returncode}: {last})")
