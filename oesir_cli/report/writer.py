"""Writing a report folder: pages, pictures, report.json, SHA256SUMS and PDFs, all or nothing.

The folder is built beside its destination and moved into place at the end, so
an interrupted run leaves the previous report (or nothing), never half a case
file; a folder that is not empty and holds no oesir report is never touched.
"""

from __future__ import annotations

import json
import os
import re
import shutil
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import api
from ..errors import OesirError
from ..registry import sha256_file
from ..render import write_png
from ..search import Searcher
from .case import examine
from .custody import reproducibility
from .page import index_page, sheet_count, suspect_page
from .pdf import find_browser, print_pdf

MARKER = "report.json"  # what makes a folder an oesir report (and so replaceable by the next one)
CHECKSUMS = "SHA256SUMS"  # `sha256sum -c SHA256SUMS` inside the folder checks every file of the report
REPORT_FORMAT = 1
SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]+")


class ReportError(OesirError):
    """The report cannot be written as asked; one line."""


@dataclass(frozen=True)
class ReportedSuspect:
    """One suspect's entry in a written report."""

    suspect: str
    page: Path
    pdf: Path | None
    verdict: str | None
    error: str | None
    sheets: int  # printed A4 pages of its page

    def as_dict(self) -> dict:
        return {
            "suspect": self.suspect,
            "page": str(self.page),
            "pdf": None if self.pdf is None else str(self.pdf),
            "verdict": self.verdict,
            "error": self.error,
            "sheets": self.sheets,
        }


@dataclass(frozen=True)
class ReportSummary:
    out: Path
    index_page: Path
    suspects: list[ReportedSuspect] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # arguments that named no photo, and why

    @property
    def failed(self) -> int:
        return len(self.skipped) + sum(s.error is not None for s in self.suspects)


def page_name(number: int, path: str) -> str:
    """A file-system-safe, unique name for suspect `number`'s page and picture folder."""
    stem = SAFE_NAME.sub("_", Path(path).stem).strip("_")[:60] or "photo"
    return f"{number:03d}-{stem}"


def write_report(
    suspects: Iterable[str | os.PathLike],
    out: str | os.PathLike,
    index_dir: str | os.PathLike | None = None,
    pdf: bool = False,
    top: int = 10,
    threshold: float | None = None,
    command: str | None = None,
    progress: Callable[[int, int, str], None] | None = None,
) -> ReportSummary:
    """Search the index for each suspect photo and write the case file to the folder `out`.

    `out` must be absent, empty, or an earlier oesir report (which is replaced
    whole). An unreadable suspect gets a page saying why. An index with no
    photos, or `pdf` without Chromium, is a ReportError before anything is
    written. `command` is recorded as the command line (default: this
    process's).
    """
    if top < 1:
        raise ValueError(f"top must be at least 1, not {top}")
    out = Path(out)
    _check_destination(out)
    browser = find_browser() if pdf else None
    if pdf and browser is None:
        raise ReportError(
            "--pdf needs Chromium, which is not installed (Debian: apt-get install chromium; "
            "or set OESIR_CHROMIUM to a Chromium or Chrome binary); nothing written"
        )
    searcher = api.open_searcher(index_dir)
    try:
        return _write(searcher, suspects, out, browser, top, threshold, command, progress)
    finally:
        searcher.close()


def _write(
    searcher: Searcher,
    suspects: Iterable[str | os.PathLike],
    out: Path,
    browser: str | None,
    top: int,
    threshold: float | None,
    command: str | None,
    progress: Callable[[int, int, str], None] | None,
) -> ReportSummary:
    if searcher.photos.count == 0:
        raise ReportError(f"the index at {searcher.store.location} holds no photos; run `oesir index` first; nothing written")
    skipped: list[tuple[str, str]] = []
    paths = api.query_photos(suspects, skipped)
    if not paths:
        raise ReportError("no suspect photo given" + (f" ({skipped[0][0]}: {skipped[0][1]})" if skipped else ""))
    partial = out.parent / f".{out.name}.partial-{os.getpid()}"
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir(parents=True)
    try:
        cases, names = [], []
        for i, path in enumerate(paths, 1):
            if progress:
                progress(i - 1, len(paths), path)
            name = page_name(i, path)
            (partial / name).mkdir()
            cases.append(examine(searcher, path, _saver(partial, name), top=top, threshold=threshold))
            names.append(name)
        if progress:
            progress(len(paths), len(paths), "")
        repro = reproducibility(searcher, command)
        reported = []
        for case, name in zip(cases, names):
            page = partial / f"{name}.html"
            page.write_text(suspect_page(case, repro), encoding="utf-8")
            pdf_path = None
            if browser is not None:
                pdf_path = partial / f"{name}.pdf"
                print_pdf(page, pdf_path, browser)
            verdict = None if case.result is None or case.result.verdict is None else case.result.verdict.value
            reported.append(
                ReportedSuspect(
                    case.path,
                    out / page.name,
                    None if pdf_path is None else out / pdf_path.name,
                    verdict,
                    case.error,
                    sheet_count(case),
                )
            )
        (partial / "index.html").write_text(index_page(cases, [f"{n}.html" for n in names], repro), encoding="utf-8")
        record = {
            "oesir_report": REPORT_FORMAT,
            "reproducibility": repro.as_dict(),
            "suspects": [{**c.as_dict(), "page": f"{n}.html"} for c, n in zip(cases, names)],
            "skipped": [{"path": p, "error": why} for p, why in skipped],
        }
        (partial / MARKER).write_text(json.dumps(record, indent=1, default=_json_default) + "\n", encoding="utf-8")
        _write_checksums(partial)
        _move_into_place(partial, out)
    except BaseException:
        shutil.rmtree(partial, ignore_errors=True)
        raise
    return ReportSummary(out, out / "index.html", reported, skipped)


def _check_destination(out: Path) -> None:
    if out.exists() and not out.is_dir():
        raise ReportError(f"{out} is a file, not a folder for the report")
    if out.is_dir() and any(out.iterdir()) and not (out / MARKER).is_file():
        raise ReportError(f"{out} is not empty and holds no oesir report; choose a new or empty folder")


def _saver(folder: Path, name: str) -> Callable[[str, np.ndarray], str]:
    def save(file: str, rgb: np.ndarray) -> str:
        write_png(folder / name / file, rgb)
        return f"{name}/{file}"

    return save


def _json_default(value: object) -> object:
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, Path):
        return str(value)
    raise TypeError(f"{type(value).__name__} is not JSON serialisable")


def _write_checksums(folder: Path) -> None:
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.name != CHECKSUMS)
    lines = [f"{sha256_file(p)}  {p.relative_to(folder).as_posix()}" for p in files]
    (folder / CHECKSUMS).write_text("\n".join(lines) + "\n", encoding="utf-8")


def _move_into_place(partial: Path, out: Path) -> None:
    """Replace `out` (absent, empty, or an earlier report) by the finished folder."""
    old = None
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
    os.replace(partial, out)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
