"""`oesir report`: the case file, opened in a real headless Chromium and printed to PDF.

The browser tests need Debian's chromium and the playwright package (test
extra); `.ci/run` installs chromium and sets OESIR_REQUIRE_BROWSER=1 so that
there they fail instead of being skipped.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from oesir_cli import api
from oesir_cli.cli import app
from oesir_cli.geometry import transform_points
from oesir_cli.report import ReportError, find_browser
from oesir_cli.report import writer as report_writer
from oesir_cli.report.facts import photo_facts
from oesir_cli.report.figures import source_region
from oesir_cli.report.pdf import QUIET_FLAGS

from .conftest import EXAMPLES, synthetic_photo

runner = CliRunner()
SPLICED = EXAMPLES.parent / "spliced.jpg"
PASTED = (300, 120, 460, 280)  # x1, y1, x2, y2 of the cup in the splice made here
CUP = (165, 10, 415, 260)  # where the cup is in coffee.jpg
REQUIRE_BROWSER = os.environ.get("OESIR_REQUIRE_BROWSER") == "1"


def _browser() -> str:
    found = find_browser()
    if found is None:
        if REQUIRE_BROWSER:
            pytest.fail("OESIR_REQUIRE_BROWSER=1 but no Chromium is installed")
        pytest.skip("no Chromium installed (apt-get install chromium)")
    return found


@pytest.fixture(scope="module")
def index_dir(tmp_path_factory) -> Path:
    d = tmp_path_factory.mktemp("report-index")
    photos = d / "photos"
    shutil.copytree(EXAMPLES, photos)
    api.index([photos], index_dir=d / "idx")
    return d / "idx"


@pytest.fixture(scope="module")
def example_report(index_dir, tmp_path_factory):
    """The report of the bundled example splice plus one photo with no source, with PDFs."""
    _browser()
    out = tmp_path_factory.mktemp("report") / "case-file"
    stranger = out.parent / "stranger.png"
    cv2.imwrite(str(stranger), synthetic_photo(41, (400, 300)))
    summary = api.report([SPLICED, stranger], out, index_dir=index_dir, pdf=True, command="oesir report (test)")
    return summary


def _open(page_path: Path, screenshot: Path | None = None) -> dict:
    """Load a page in headless Chromium; what a reader would see, and every error the browser logged."""
    sync_playwright = pytest.importorskip("playwright.sync_api").sync_playwright
    errors: list[str] = []
    with sync_playwright() as p:
        args = [f for f in QUIET_FLAGS if f != "--headless"] + (["--no-sandbox"] if os.geteuid() == 0 else [])
        browser = p.chromium.launch(executable_path=_browser(), headless=True, args=args)
        try:
            page = browser.new_page(viewport={"width": 1100, "height": 900})
            page.on("console", lambda m: errors.append(m.text) if m.type == "error" else None)
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("requestfailed", lambda r: errors.append(f"failed: {r.url}"))
            page.goto(page_path.resolve().as_uri(), wait_until="load")
            images = page.evaluate("Array.from(document.images).map(i => [i.getAttribute('src'), i.naturalWidth])")
            # the diagram's SVG <image>s: load each one as a picture to see it decodes
            svg_images = page.evaluate(
                """() => Promise.all(Array.from(document.querySelectorAll('svg image')).map(el => new Promise(ok => {
                     const im = new Image(); im.onload = () => ok([el.getAttribute('href'), im.naturalWidth]);
                     im.onerror = () => ok([el.getAttribute('href'), 0]); im.src = el.href.baseVal; })))"""
            )
            text = page.inner_text("body")
            ids = page.evaluate("Array.from(document.querySelectorAll('section[id]')).map(s => s.id)")
            sections = {s: page.inner_text(f"#{s}") for s in ids}
            scripts = page.evaluate("document.querySelectorAll('script').length")
            if screenshot is not None:
                page.screenshot(path=str(screenshot), full_page=True)
        finally:
            browser.close()
    return {"errors": errors, "images": images, "svg": svg_images, "text": text, "sections": sections, "scripts": scripts}


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def test_example_report_in_a_real_browser(example_report, tmp_path):
    entry = example_report.suspects[0]
    shot = tmp_path / "report.png"
    seen = _open(entry.page, shot)
    assert seen["errors"] == []
    assert seen["images"] and all(w > 0 for _, w in seen["images"]), seen["images"]
    assert len(seen["svg"]) == 3 and all(w > 0 for _, w in seen["svg"]), seen["svg"]  # host, donor, suspect
    text = seen["text"]
    assert "Sources found" in text
    assert _sha256(SPLICED) in text
    assert "leads for an examiner, not findings" in text
    assert "rocket.jpg" in seen["sections"]["host"] and "Host" in seen["sections"]["host"]
    assert "chelsea.jpg" in seen["sections"]["donor1"] and "Donor" in seen["sections"]["donor1"]
    repro = seen["sections"]["reproducibility"]
    for model in ("ssd_mobilenet_v2_coco.onnx", "efficientnet_lite0_teacher.onnx", "rootsift_vocabulary_16k_pq16.npz"):
        assert model in repro
    assert "oesir report (test)" in repro and "generation" in repro
    with Image.open(shot) as im:
        assert im.width >= 1000 and im.height > 1000
    index = _open(example_report.index_page)
    assert index["errors"] == [] and all(w > 0 for _, w in index["images"])
    assert "001-spliced.jpg" not in index["text"] and "spliced.jpg" in index["text"]


def test_example_pdf_has_one_sheet_per_section_and_the_hashes(example_report):
    pypdf = pytest.importorskip("pypdf")
    entry = example_report.suspects[0]
    assert entry.verdict == "sources" and entry.sheets == 5  # summary, ranking, host, one donor, reproducibility
    reader = pypdf.PdfReader(str(entry.pdf))
    assert len(reader.pages) == entry.sheets
    text = "".join(p.extract_text() for p in reader.pages)
    assert _sha256(SPLICED) in text.replace("\n", "")
    assert "chelsea.jpg" in reader.pages[3].extract_text()


def test_a_suspect_with_no_source_says_so(example_report):
    entry = example_report.suspects[1]
    assert entry.verdict == "none" and entry.error is None
    seen = _open(entry.page)
    assert seen["errors"] == [] and all(w > 0 for _, w in seen["images"])
    assert "No source in the collection" in seen["text"]
    assert "host" not in seen["sections"] and "donor1" not in seen["sections"]
    pypdf = pytest.importorskip("pypdf")
    assert len(pypdf.PdfReader(str(entry.pdf)).pages) == entry.sheets == 3


def test_a_copy_move_is_named_as_such(index_dir, tmp_path):
    """A part of the host copied elsewhere in it: the verdict says where the changed region came from, not that
    its donor is missing."""
    moved = cv2.imread(str(EXAMPLES / "astronaut.jpg"))
    moved[300:420, 300:420] = moved[40:160, 20:140].copy()
    suspect = tmp_path / "moved.png"
    cv2.imwrite(str(suspect), moved)
    summary = api.report([suspect], tmp_path / "out", index_dir=index_dir, command="oesir report (test)")
    html = summary.suspects[0].page.read_text()
    assert "a part of astronaut.jpg copied and moved within it (copy-move)" in html
    assert "no donor of the changed region" not in html


def test_report_folder_is_checksummed_and_machine_readable(example_report):
    out = example_report.out
    lines = (out / "SHA256SUMS").read_text().splitlines()
    listed = {line.split("  ", 1)[1]: line.split("  ", 1)[0] for line in lines}
    on_disk = {p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file() and p.name != "SHA256SUMS"}
    assert set(listed) == on_disk
    assert all(_sha256(out / name) == digest for name, digest in listed.items())
    record = json.loads((out / "report.json").read_text())
    case = record["suspects"][0]
    assert case["verdict"] == "sources" and case["facts"]["sha256"] == _sha256(SPLICED)
    roles = {Path(s["image"]).name: s["role"] for s in case["sources"]}
    assert roles["rocket.jpg"] == "host" and roles["chelsea.jpg"] == "donor"
    assert record["reproducibility"]["photos"] == 4
    assert not list(out.parent.glob(".case-file.partial-*"))


def test_unreadable_suspect_gets_a_page_that_says_so(index_dir, tmp_path):
    bad = tmp_path / "broken.jpg"
    bad.write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    out = tmp_path / "out"
    r = runner.invoke(app, ["report", str(bad), "--index", str(index_dir), "--out", str(out)])
    assert r.exit_code == 2, r.output  # every suspect failed
    assert "broken.jpg" in r.stderr and "its page says so" in r.stderr and "Traceback" not in r.output
    page = next(out.glob("001-broken.html"))
    html = page.read_text()
    assert "Not examined" in html and _sha256(bad) in html
    if find_browser() is not None or REQUIRE_BROWSER:
        seen = _open(page)
        assert seen["errors"] == [] and "Not examined" in seen["text"]


def test_empty_index_is_one_line_error_and_nothing_written(tmp_path):
    empty = tmp_path / "empty-photos"
    empty.mkdir()
    api.index([empty], index_dir=tmp_path / "idx")
    out = tmp_path / "out"
    r = runner.invoke(app, ["report", str(SPLICED), "--index", str(tmp_path / "idx"), "--out", str(out)])
    assert r.exit_code == 1
    assert "holds no photos" in r.stderr and len(r.stderr.strip().splitlines()[-1]) < 200
    assert not out.exists()


def test_pdf_without_chromium_is_a_clear_error_before_any_work(index_dir, tmp_path, monkeypatch):
    monkeypatch.setenv("OESIR_CHROMIUM", str(tmp_path / "no-such-browser"))
    out = tmp_path / "out"
    r = runner.invoke(app, ["report", str(SPLICED), "--index", str(index_dir), "--out", str(out), "--pdf"])
    assert r.exit_code == 1 and "--pdf needs Chromium" in r.stderr and "nothing written" in r.stderr
    assert not out.exists()


def test_a_foreign_folder_is_never_touched_and_an_old_report_is_replaced_whole(index_dir, tmp_path, monkeypatch):
    foreign = tmp_path / "notes"
    foreign.mkdir()
    (foreign / "mine.txt").write_text("keep me")
    with pytest.raises(ReportError, match="not empty"):
        api.report([SPLICED], foreign, index_dir=index_dir)
    assert [p.name for p in foreign.iterdir()] == ["mine.txt"]

    out = tmp_path / "case"
    api.report([SPLICED, EXAMPLES / "coffee.jpg"], out, index_dir=index_dir)
    assert (out / "002-coffee.html").is_file()
    before = (out / "SHA256SUMS").read_text()

    calls = []

    def interrupted(*args, **kwargs):  # Ctrl-C on the second suspect
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(*args, **kwargs)

    real = report_writer.examine
    monkeypatch.setattr(report_writer, "examine", interrupted)
    with pytest.raises(KeyboardInterrupt):
        api.report([SPLICED, EXAMPLES / "chelsea.jpg"], out, index_dir=index_dir)
    assert (out / "SHA256SUMS").read_text() == before, "the earlier report is intact"
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".case.")], "no partial folder is left"
    monkeypatch.setattr(report_writer, "examine", real)

    api.report([SPLICED], out, index_dir=index_dir)
    assert not (out / "002-coffee.html").exists() and not (out / "002-coffee").exists(), "no stale page from the old report"


def test_donor_region_is_outlined_where_it_came_from(index_dir, tmp_path):
    """A cup cut from coffee.jpg and pasted at PASTED: the donor's transform maps the paste back onto the cup."""
    host = cv2.imread(str(EXAMPLES / "astronaut.jpg"))
    donor = cv2.imread(str(EXAMPLES / "coffee.jpg"))
    x1, y1, x2, y2 = PASTED
    q = host.copy()
    q[y1:y2, x1:x2] = cv2.resize(donor[CUP[1] : CUP[3], CUP[0] : CUP[2]], (x2 - x1, y2 - y1))
    suspect = tmp_path / "suspect.jpg"
    cv2.imwrite(str(suspect), q, [cv2.IMWRITE_JPEG_QUALITY, 90])
    out = tmp_path / "out"
    api.report([suspect], out, index_dir=index_dir)
    case = json.loads((out / "report.json").read_text())["suspects"][0]
    donors = [s for s in case["sources"] if s["role"] == "donor"]
    assert [Path(s["image"]).name for s in donors] == ["coffee.jpg"]
    h = np.array(donors[0]["localization"]["homography"])
    corners = np.array([[x1, y1], [x2, y1], [x2, y2], [x1, y2]], np.float64)
    back = transform_points(np.linalg.inv(h), corners)
    found = (*back.min(axis=0), *back.max(axis=0))
    assert _box_iou(found, CUP) > 0.8, found
    pictures = donors[0]["pictures"]
    assert {"suspect", "original", "heat", "thumb"} <= set(pictures) and all((out / p).is_file() for p in pictures.values())


def _box_iou(a, b) -> float:
    ix = max(0.0, min(a[2], b[2]) - max(a[0], b[0]))
    iy = max(0.0, min(a[3], b[3]) - max(a[1], b[1]))
    union = (a[2] - a[0]) * (a[3] - a[1]) + (b[2] - b[0]) * (b[3] - b[1]) - ix * iy
    return ix * iy / union


def test_source_region_pulls_the_mask_back_through_the_transform():
    mask = np.zeros((200, 300), np.uint8)
    mask[50:100, 100:160] = 255
    h = np.array([[0.5, 0, 20], [0, 0.5, 10], [0, 0, 1]], np.float64)  # original -> query: halve, then shift
    back = source_region(mask, h, (400, 500))
    ys, xs = np.nonzero(back)
    assert back.shape == (400, 500)
    np.testing.assert_allclose((xs.min(), xs.max() + 1, ys.min(), ys.max() + 1), (160, 280, 80, 180), atol=2)


def test_photo_facts_show_exif_as_found(tmp_path):
    im = Image.fromarray(np.full((40, 60, 3), 128, np.uint8))
    exif = Image.Exif()
    exif[0x010F] = "ACME"
    exif[0x0110] = "Model <X>"
    exif[0x0131] = '<img src=x onerror="alert(1)">'
    exif.get_ifd(0x8769)[0x9003] = "2024:05:06 07:08:09"
    path = tmp_path / "exif.jpg"
    im.save(path, exif=exif)
    facts = photo_facts(path)
    assert facts.exif["camera make"] == "ACME" and facts.exif["camera model"] == "Model <X>"
    assert facts.exif["date taken"] == "2024:05:06 07:08:09"
    assert (facts.width, facts.height, facts.format) == (60, 40, "JPEG")
    assert facts.sha256 == _sha256(path) and facts.bytes == path.stat().st_size
    assert photo_facts(tmp_path / "absent.jpg").error.startswith("cannot read the file")


def test_exif_text_is_shown_not_run(index_dir, tmp_path):
    """A hostile EXIF field is text on the page, never markup."""
    rgb = cv2.cvtColor(cv2.imread(str(SPLICED)), cv2.COLOR_BGR2RGB)
    exif = Image.Exif()
    exif[0x0131] = '<img src=x onerror="console.error(666)"><script>console.error(667)</script>'
    path = tmp_path / "hostile.jpg"
    Image.fromarray(rgb).save(path, exif=exif, quality=95)
    out = tmp_path / "out"
    api.report([path], out, index_dir=index_dir)
    page = out / "001-hostile.html"
    assert "<script>" not in page.read_text()
    if find_browser() is not None or REQUIRE_BROWSER:
        seen = _open(page)
        assert seen["errors"] == [] and seen["scripts"] == 0
        assert "<script>console.error(667)</script>" in seen["text"]


def test_localize_homography_is_in_the_photos_own_pixels(tmp_path):
    """Alignment runs on reduced views; the transform it returns maps the photos as given."""
    big = cv2.resize(cv2.imread(str(EXAMPLES / "astronaut.jpg")), (1600, 1600))
    small = cv2.resize(big, (800, 800))
    small[300:420, 300:420] = 0  # a change, so there is something to localize
    original, query = tmp_path / "big.png", tmp_path / "small.jpg"
    cv2.imwrite(str(original), big)
    cv2.imwrite(str(query), small, [cv2.IMWRITE_JPEG_QUALITY, 92])
    r = api.localize_paths(query, original, use_features=False)
    pts = np.array([[100.0, 100.0], [1500.0, 300.0], [800.0, 1400.0]])
    np.testing.assert_allclose(transform_points(r.alignment.homography, pts), pts / 2, atol=3.0)
