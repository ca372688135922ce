"""`oesir report`: the case file an examiner hands on, as HTML pages (and PDFs).

Modules: `facts` (a file's hash, size, format, EXIF), `case` (one suspect
searched and localized through `oesir_cli.api`, its pictures drawn), `figures`
(pure picture functions), `custody` (the reproducibility block), `page` (HTML),
`pdf` (headless Chromium print-to-PDF), `writer` (the folder, all or nothing).
"""

from .pdf import PdfError, find_browser
from .writer import ReportedSuspect, ReportError, ReportSummary, write_report

__all__ = ["PdfError", "ReportError", "ReportSummary", "ReportedSuspect", "find_browser", "write_report"]
