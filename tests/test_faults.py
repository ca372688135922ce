"""Faults: messy input, kill -9, two writers, readers during writes, disk full, damaged index files.

The index is evidence; these tests inject each fault and check that the index
afterwards is exactly what it should be (compared row by row with a clean run).
"""

from __future__ import annotations

import json
import os
import random
import shlex
import shutil
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from oesir_cli import api
from oesir_cli.cli import app
from oesir_cli.store import Store, writer_lock

from .conftest import EXAMPLES, synthetic_photo

runner = CliRunner()
OESIR = [sys.executable, "-c", "from oesir_cli.cli import main; main()"]


def _content(idx: Path) -> list[tuple]:
    store = Store(idx)
    try:
        return store.content()
    finally:
        store.close()


def _indexed(tmp_path: Path, n: int) -> tuple[Path, Path, list[tuple]]:
    """n small photos, indexed: (photo folder, index folder, the index's content)."""
    photos = _small_photos(tmp_path / "photos", n)
    idx = tmp_path / "idx"
    api.index([photos], index_dir=idx)
    return photos, idx, _content(idx)


def _small_photos(folder: Path, n: int, size: tuple[int, int] = (240, 180)) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(n):
        cv2.imwrite(str(folder / f"p{i:02d}.jpg"), synthetic_photo(100 + i, size))
    return folder


def _messy_folder(root: Path) -> tuple[Path, set[str], set[str]]:
    """A folder of everything a phone dump or scrape holds; returns it, names that must index, names that must fail."""
    d = root / "messy"
    d.mkdir()
    rgb = Image.open(EXAMPLES / "chelsea.jpg").convert("RGB")
    rgb.thumbnail((320, 320))
    good: set[str] = set()

    def save(name: str, im: Image.Image, **kw) -> None:
        im.save(d / name, **kw)
        good.add(name)

    save("grey.png", rgb.convert("L"))
    save("cmyk.jpg", rgb.convert("CMYK"))
    save("sixteen.png", Image.fromarray(np.asarray(rgb.convert("L"), np.uint16) * 257))
    save("palette.gif", rgb.convert("P"))
    save("alpha.png", rgb.convert("RGBA"))
    save("animated.gif", rgb, save_all=True, append_images=[rgb.rotate(90)])
    save("animated.webp", rgb, save_all=True, append_images=[rgb.rotate(90)])
    exif = Image.Exif()
    exif[0x0112] = 6
    save("rotated.jpg", rgb, exif=exif.tobytes())
    save("with space\nand newline.jpg", rgb.rotate(180))
    save("ünïcødé 写真.jpg", rgb.transpose(Image.Transpose.FLIP_LEFT_RIGHT))
    raw_name = os.fsdecode(b"latin1-\xe9t\xe9.jpg")  # not valid UTF-8
    save(raw_name, rgb.rotate(90, expand=True))
    (d / "folder.jpg").mkdir()  # a directory named like a photo: walked, not read
    save("folder.jpg/inside.jpg", rgb.crop((0, 0, 200, 150)))

    data = (EXAMPLES / "rocket.jpg").read_bytes()
    bad = {
        "truncated.jpg": data[: len(data) // 3],
        "zero.jpg": b"",
        "text.png": b"this is not a photo\n",
        "corrupt.png": (d / "grey.png").read_bytes()[:60] + os.urandom(400),
    }
    for name, content in bad.items():
        (d / name).write_bytes(content)
    bomb = Image.new("1", (50_000, 50_000))  # 1-bit: small in memory, 2.5 G pixels declared
    bomb.save(d / "bomb.png")
    (d / "broken-link.jpg").symlink_to(d / "does-not-exist.jpg")
    (d / "loop").symlink_to(d)  # symlink loop back to the folder itself
    failed = {*bad, "bomb.png", "broken-link.jpg"}
    return d, good, failed


def test_messy_folder_indexes_the_good_and_lists_the_bad(tmp_path):
    folder, good, failed = _messy_folder(tmp_path)
    idx = tmp_path / "idx"
    r = runner.invoke(app, ["index", str(folder), "--index", str(idx), "--json", "--max-pixels", "100000000"])
    assert r.exit_code == 3, r.output  # completed with skipped files
    summary = json.loads(r.stdout.strip().splitlines()[-1])
    assert {Path(f["path"]).name for f in summary["failed"]} == failed
    indexed = {os.path.relpath(p, folder) for p in Store(idx).images()}
    assert indexed == good
    assert "Traceback" not in r.output
    for f in summary["failed"]:
        assert "\n" not in f["error"]
    stderr_lines = [ln for ln in r.stderr.splitlines() if "skipped" in ln]
    assert len(stderr_lines) >= len(failed)
    assert any("exceeds --max-pixels" in f["error"] for f in summary["failed"])

    # every odd name can be searched for, and comes back as itself in JSON
    odd = [folder / "with space\nand newline.jpg", folder / os.fsdecode(b"latin1-\xe9t\xe9.jpg")]
    stdin = b"\0".join(os.fsencode(p) for p in odd)
    r = runner.invoke(app, ["search", "-", "-0", "--index", str(idx), "--json", "--top", "3"], input=stdin)
    assert r.exit_code == 0, r.output
    lines = [json.loads(x) for x in r.stdout.strip().splitlines()]
    assert [ln["query"] for ln in lines] == [str(p) for p in odd]
    for ln in lines:
        assert ln["matches"][0]["image"] == ln["query"]


def test_unreadable_file_is_skipped(tmp_path, monkeypatch):
    photos = _small_photos(tmp_path / "photos", 3)
    locked = photos / "p01.jpg"
    if os.geteuid() != 0:
        locked.chmod(0)
    else:  # root reads anything: inject the error the kernel would give
        import oesir_cli.indexer as indexer

        real = indexer.sha256_file

        def deny(path, *a, **kw):
            if Path(path) == locked:
                raise PermissionError(13, "Permission denied", str(path))
            return real(path, *a, **kw)

        monkeypatch.setattr(indexer, "sha256_file", deny)
    s = api.index([photos], index_dir=tmp_path / "idx")
    assert [(Path(p).name, e) for p, e in s.failed] == [("p01.jpg", "cannot read (Permission denied)")]
    assert s.photos == 2


def test_query_without_objects_still_searches(tmp_path):
    photos = _small_photos(tmp_path / "photos", 2)
    flat = np.full((200, 300, 3), 128, np.uint8)
    flat[:, 150:] = 90
    cv2.imwrite(str(photos / "flat.png"), flat)
    idx = tmp_path / "idx"
    api.index([photos], index_dir=idx)
    matches = api.search_path(api.open_searcher(idx), photos / "flat.png", top=3)
    assert Path(matches[0].image).name == "flat.png"
    boxes, _, _ = api.engine().boxes(flat[:, :, ::-1].copy())
    assert boxes[0].tolist() == [0, 0, 300, 200]  # the whole image is always an object


def test_kill_9_at_random_points_then_resume_gives_identical_index(tmp_path):
    photos = _small_photos(tmp_path / "photos", 24)
    reference = tmp_path / "reference"
    api.index([photos], index_dir=reference)
    expected = _content(reference)
    assert len(expected) == 24

    idx = tmp_path / "idx"
    rng = random.Random(1234)
    kills, attempts, committed = 0, 0, []
    while kills < 20 and attempts < 60:
        attempts += 1
        proc = subprocess.Popen([*OESIR, "index", str(photos), "--index", str(idx)], stderr=subprocess.DEVNULL)
        time.sleep(rng.uniform(0.5, 4.0))
        if proc.poll() is None:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.wait()
        if (idx / "oesir.sqlite").exists():
            store = Store(idx)  # opens after every kill, and holds only complete photos
            assert store.db.execute("PRAGMA quick_check").fetchone()[0] == "ok"
            assert store.damaged_rows() == []
            now = {r[0] for r in store.content()}
            assert {r[0] for r in committed} <= now  # nothing committed was lost
            committed = store.content()
            store.close()
        if len(committed) == 24:  # finished: start over so later kills land at other points
            shutil.rmtree(idx)
            committed = []
    assert kills >= 20, f"only {kills} kills in {attempts} runs"
    r = subprocess.run([*OESIR, "index", str(photos), "--index", str(idx)], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert _content(idx) == expected
    assert not list(idx.glob(".*.tmp"))
    r = subprocess.run([*OESIR, "check", "--index", str(idx)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def test_second_writer_gets_clear_message(tmp_path):
    photos = _small_photos(tmp_path / "photos", 2)
    idx = tmp_path / "idx"
    api.index([photos], index_dir=idx)
    with writer_lock(idx):
        r = runner.invoke(app, ["index", str(photos), "--index", str(idx)])
        assert r.exit_code == 1 and "being written by another oesir process" in r.stderr
        r = runner.invoke(app, ["index", "--rebuild", str(photos), "--index", str(idx)])
        assert r.exit_code == 1
    assert len(_content(idx)) == 2  # the refused --rebuild touched nothing


def test_reader_sees_last_committed_state(tmp_path, monkeypatch):
    from oesir_cli import graphs
    from oesir_cli.imageio import load_rgb
    from oesir_cli.store import ImageRecord

    monkeypatch.setattr(graphs, "EXACT_OBJECTS_MAX", 0)  # so the index has an object graph too
    photos = _small_photos(tmp_path / "photos", 4)
    idx = tmp_path / "idx"
    api.index([photos / "p00.jpg", photos / "p01.jpg"], index_dir=idx)
    graph_before = (idx / "objects.hnsw").read_bytes()
    segments_before = sorted(p.name for p in idx.glob("local-*.ivf"))

    writer = Store(idx)
    new_path = str(photos / "p02.jpg")
    data = api.engine().describe(load_rgb(new_path))
    with writer_lock(idx):
        with writer.transaction() as db:
            new_id = writer.put(db, ImageRecord(0, new_path, "0" * 64, 1, 1, 240, 180), data)
            writer.add_local_features(db, [(new_id, data.keypoints, data.descriptors)])
            (written,) = set(p.name for p in idx.glob("local-*.ivf")) - set(segments_before)  # on disk, not yet committed
            during = api.open_searcher(idx)  # mid-transaction
            assert len(during.catalogue.paths) == 2 and new_path not in during.catalogue.paths
            assert [file for _, file, _, _ in during.catalogue.segments] == segments_before
            assert during.photos.local.count == sum(s.count for s in during.photos.local.segments.values()) > 0
        assert (idx / written).exists()  # the reader left the writer's segment alone
        after = api.open_searcher(idx)  # committed, writer still holds the lock
        assert len(after.catalogue.paths) == 3 and new_path in after.catalogue.paths
        assert written in [file for _, file, _, _ in after.catalogue.segments]
        found = after.photos.local.probe(data.descriptors, k=5)  # its own keypoints find the new photo first
        votes = np.bincount(found.photo[found.ratio_votes(0.7)], minlength=3)
        assert votes.argmax() == after.catalogue.paths.index(new_path)
        assert (idx / "objects.hnsw").read_bytes() == graph_before  # readers never write graphs under a writer
    writer.close()


def _unshare_ok() -> bool:
    try:
        r = subprocess.run(["unshare", "-rm", "true"], capture_output=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return False
    return r.returncode == 0


@pytest.mark.skipif(not _unshare_ok(), reason="needs `unshare -rm` to mount a small tmpfs")
def test_disk_full_keeps_previous_index(tmp_path):
    first = _small_photos(tmp_path / "first", 3)
    more = tmp_path / "more"
    more.mkdir()
    for i in range(6):
        cv2.imwrite(str(more / f"m{i}.jpg"), synthetic_photo(200 + i, (480, 360)))
    mnt = tmp_path / "mnt"
    mnt.mkdir()
    dump = (
        f"{sys.executable} -c 'import sys, hashlib; from oesir_cli.store import Store; "
        "print(hashlib.sha256(repr(Store(sys.argv[1]).content()).encode()).hexdigest())'"
    )
    oesir = shlex.join(OESIR)
    script = f"""
set -u
mount -t tmpfs -o size=24m tmpfs {mnt}
idx={mnt}/idx
{oesir} index {first} --index $idx 2>/dev/null || exit 10
{dump} $idx > {tmp_path}/before
free=$(df --output=avail -B1 {mnt} | tail -1)
fallocate -l $((free - 48 * 1024)) {mnt}/filler || head -c $((free - 48 * 1024)) /dev/zero > {mnt}/filler
{oesir} index {first} {more} --index $idx 2> {tmp_path}/err
echo $? > {tmp_path}/rc
rm {mnt}/filler
{dump} $idx > {tmp_path}/after
{oesir} check --index $idx > {tmp_path}/check 2>&1; echo $? > {tmp_path}/check_rc
{oesir} index {first} {more} --index $idx 2>/dev/null; echo $? > {tmp_path}/rc2
"""
    r = subprocess.run(["unshare", "-rm", "bash", "-c", script], capture_output=True, text=True, timeout=240)
    assert r.returncode == 0, r.stderr
    err = (tmp_path / "err").read_text()
    assert (tmp_path / "rc").read_text().strip() == "1", err
    assert "disk full" in err and "Traceback" not in err
    assert len([ln for ln in err.splitlines() if "error" in ln]) == 1
    assert (tmp_path / "after").read_text() == (tmp_path / "before").read_text()
    assert (tmp_path / "check_rc").read_text().strip() == "0", (tmp_path / "check").read_text()
    assert (tmp_path / "rc2").read_text().strip() == "0"  # with space again, the same command completes


def test_full_disk_in_a_transaction_is_a_typed_error_and_rolls_back(tmp_path):
    """SQLite's 'database or disk is full' (here: a page limit) is `DiskFullError` at the store boundary."""
    from oesir_cli.errors import DiskFullError

    store = Store(tmp_path / "idx", create=True)
    with store.transaction():
        store.set_meta("probe", "1")
    generation = store.generation
    store.db.execute(f"PRAGMA max_page_count = {store.db.execute('PRAGMA page_count').fetchone()[0]}")
    with pytest.raises(DiskFullError, match="disk full .*keeps its last committed state"), store.transaction() as db:
        store.set_meta("probe", "2")
        db.execute("INSERT INTO meta(key, value) VALUES ('filler', ?)", ("x" * 1_000_000,))
    assert not store.db.in_transaction
    assert (store.meta("probe"), store.meta("filler"), store.generation) == ("1", None, generation)
    store.close()


def _tamper(path: Path, offset: int) -> None:
    with open(path, "r+b") as fh:
        fh.seek(offset)
        b = fh.read(1)
        fh.seek(offset)
        fh.write(bytes([b[0] ^ 0xFF]))


def test_damaged_rows_found_repaired_and_reindexed(tmp_path):
    photos, idx, expected = _indexed(tmp_path, 4)
    db = sqlite3.connect(idx / "oesir.sqlite")
    image_id, name, emb = db.execute("SELECT id, name, embeddings FROM photos ORDER BY id LIMIT 1 OFFSET 2").fetchone()
    damaged_path = str(photos / name)
    flipped = bytearray(emb)
    flipped[40] ^= 0x01
    db.execute("UPDATE photos SET embeddings=? WHERE id=?", (bytes(flipped), image_id))
    db.commit()
    db.close()

    r = runner.invoke(app, ["check", "--index", str(idx), "--json"])
    assert r.exit_code == 1
    report = json.loads(r.stdout)
    assert [d["path"] for d in report["damaged_photos"]] == [damaged_path]
    assert "--repair" in r.stderr
    r = runner.invoke(app, ["check", "--index", str(idx), "--repair", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["photos"] == 3
    s = api.index([photos], index_dir=idx)
    assert s.added == 1
    assert _content(idx) == expected


def test_damaged_graphs_detected_and_rebuilt(tmp_path, monkeypatch):
    from oesir_cli import graphs

    monkeypatch.setattr(graphs, "EXACT_OBJECTS_MAX", 0)  # so the index has an object graph
    photos = _small_photos(tmp_path / "photos", 3)
    idx = tmp_path / "idx"
    api.index([photos], index_dir=idx)
    query = photos / "p01.jpg"
    expected = [m.image for m in api.search_path(api.open_searcher(idx), query, top=3)]
    _tamper(idx / "objects.hnsw", (idx / "objects.hnsw").stat().st_size // 2)
    r = runner.invoke(app, ["check", "--index", str(idx), "--json"])
    assert r.exit_code == 1 and json.loads(r.stdout)["graphs"]["objects.hnsw"] == "damaged"
    assert json.loads(r.stdout)["damaged_photos"] == []  # derived: no photo is lost
    r = runner.invoke(app, ["check", "--index", str(idx), "--repair", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["graphs"]["objects.hnsw"] == "rebuilt"
    assert json.loads(r.stdout)["photos"] == 3
    # a truncated graph is noticed when the index is opened, and rebuilt then
    with open(idx / "objects.hnsw", "r+b") as fh:
        fh.truncate(100)
    assert [m.image for m in api.search_path(api.open_searcher(idx), query, top=3)] == expected
    assert runner.invoke(app, ["check", "--index", str(idx)]).exit_code == 0


def test_damaged_segment_found_repaired_and_reindexed(tmp_path):
    """One byte of one local-feature segment altered: exactly the photos whose features it holds are damaged."""
    photos = _small_photos(tmp_path / "photos", 5)
    idx = tmp_path / "idx"
    api.index([photos / "p00.jpg", photos / "p01.jpg"], index_dir=idx)  # segment 1: p00, p01
    (first,) = idx.glob("local-*.ivf")
    api.index([photos], index_dir=idx)  # segment 2: p02, p03, p04
    assert len(list(idx.glob("local-*.ivf"))) == 2
    expected = _content(idx)
    query = photos / "p00.jpg"
    assert [m.image for m in api.search_path(api.open_searcher(idx), query, top=1, mode="local")] == [str(query)]
    _tamper(first, first.stat().st_size - 3)  # same size, other bytes: only the sha256 tells

    r = runner.invoke(app, ["check", "--index", str(idx), "--json"])
    assert r.exit_code == 1 and "--repair" in r.stderr and "oesir index PATHS" in r.stderr
    report = json.loads(r.stdout)
    assert report["damaged_photos"] == [
        {"path": str(photos / name), "problem": f"its local features (segment {first.name}) are missing or damaged"}
        for name in ("p00.jpg", "p01.jpg")
    ]
    assert [d["file"] for d in report["damaged_segments"]] == [first.name] and report["graphs"] == {}
    r = runner.invoke(app, ["check", "--index", str(idx), "--repair", "--json"])
    report = json.loads(r.stdout)
    assert r.exit_code == 0 and report["ok"] and report["photos"] == 3 and report["damaged_photos"] == []
    assert not first.exists() and len(list(idx.glob("local-*.ivf"))) == 1
    assert sorted(Path(p).name for p in Store(idx).images()) == ["p02.jpg", "p03.jpg", "p04.jpg"]
    assert runner.invoke(app, ["check", "--index", str(idx)]).exit_code == 0
    assert [m.image for m in api.search_path(api.open_searcher(idx), query, top=1, mode="local")] != [str(query)]

    s = api.index([photos], index_dir=idx)
    assert (s.added, s.unchanged) == (2, 3)
    assert runner.invoke(app, ["check", "--index", str(idx)]).exit_code == 0
    assert [m.image for m in api.search_path(api.open_searcher(idx), query, top=1, mode="local")] == [str(query)]
    assert _content(idx) == expected


def test_index_being_created_is_not_called_damaged(tmp_path):
    """A reader that opens the database between its file's creation and its tables' is told to wait, not
    that the index is damaged; the schema then appears all at once."""
    photos = _small_photos(tmp_path / "photos", 1)
    idx = tmp_path / "idx"
    idx.mkdir()
    sqlite3.connect(idx / "oesir.sqlite").close()  # the file a writer has just made
    r = runner.invoke(app, ["search", str(photos / "p00.jpg"), "--index", str(idx)])
    assert r.exit_code == 1 and "being created" in r.stderr and "damaged" not in r.stderr
    assert "Traceback" not in r.output
    api.index([photos], index_dir=idx)
    assert len(_content(idx)) == 1


def test_truncated_database_reported_and_rebuild_recovers(tmp_path):
    photos, idx, expected = _indexed(tmp_path, 3)
    db_file = idx / "oesir.sqlite"
    with open(db_file, "r+b") as fh:
        fh.truncate(db_file.stat().st_size // 2)
    r = runner.invoke(app, ["check", "--index", str(idx), "--json"])
    assert r.exit_code == 1 and json.loads(r.stdout)["database"].startswith("cannot open")
    assert "--rebuild" in r.stderr
    r = runner.invoke(app, ["search", str(photos / "p00.jpg"), "--index", str(idx)])
    assert r.exit_code == 1 and "damaged" in r.stderr and "Traceback" not in r.output
    r = runner.invoke(app, ["index", "--rebuild", str(photos), "--index", str(idx)])
    assert r.exit_code == 0, r.output
    assert _content(idx) == expected
    assert list(idx.glob("oesir.sqlite.damaged-*"))  # the damaged file is kept for the record


FORMAT1_TABLES = (
    """CREATE TABLE images (id INTEGER PRIMARY KEY, path TEXT NOT NULL UNIQUE, sha256 TEXT NOT NULL,
    size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, width INTEGER NOT NULL, height INTEGER NOT NULL,
    indexed_at REAL NOT NULL)""",
    """CREATE TABLE objects (image_id INTEGER NOT NULL REFERENCES images(id) ON DELETE CASCADE,
    idx INTEGER NOT NULL, x1 REAL, y1 REAL, x2 REAL, y2 REAL, score REAL, class INTEGER, PRIMARY KEY (image_id, idx))""",
    """CREATE TABLE vectors (image_id INTEGER PRIMARY KEY REFERENCES images(id) ON DELETE CASCADE,
    embeddings BLOB NOT NULL, keypoints BLOB NOT NULL, descriptors BLOB NOT NULL, digest TEXT)""",
)


def _indexed_keeping_features(tmp_path: Path, n: int) -> tuple[Path, Path, list[tuple], dict[int, tuple[bytes, bytes]]]:
    """`_indexed`, and the local features the indexer stored: photo id -> (keypoints, descriptors) as format 1 kept them."""
    features: dict[int, tuple[bytes, bytes]] = {}
    real = Store.add_local_features

    def keep(self: Store, db: sqlite3.Connection, items: list) -> None:
        for image_id, kp, desc in items:
            features[image_id] = (np.asarray(kp, np.float32).tobytes(), np.asarray(desc, np.uint8).tobytes())
        real(self, db, items)

    with pytest.MonkeyPatch.context() as m:
        m.setattr(Store, "add_local_features", keep)
        photos, idx, expected = _indexed(tmp_path, n)
    return photos, idx, expected, features


def _rewrite_as_format1(idx: Path, features: dict[int, tuple[bytes, bytes]], digests: bool = True) -> None:
    """Turn an index into the layout earlier oesir versions wrote (same photos, same ids), the local features
    (which format 3 keeps only coded) given as the indexer stored them (`_indexed_keeping_features`)."""
    from oesir_cli.schema import OBJECT_RECORD, unpack_boxes
    from oesir_cli.upgrade import format1_digest

    db = sqlite3.connect(idx / "oesir.sqlite", isolation_level=None)
    rows = db.execute(
        "SELECT p.id, f.path, p.name, p.sha256, p.size, p.mtime_ns, p.width, p.height, p.indexed_at, p.objects, "
        "p.embeddings FROM photos p JOIN folders f ON f.id = p.folder"
    ).fetchall()
    db.execute("BEGIN")
    for statement in FORMAT1_TABLES:
        db.execute(statement)
    for pid, folder, name, sha, size, mtime, w, h, at, objs, emb in rows:
        path = os.path.join(folder, name)
        boxes = unpack_boxes(objs, w, h)
        rec = np.frombuffer(objs, OBJECT_RECORD)
        db.execute("INSERT INTO images VALUES (?,?,?,?,?,?,?,?)", (pid, path, sha.hex(), size, mtime, w, h, float(at)))
        for i, (box, score, cls) in enumerate(zip(boxes, rec["score"] / 255.0, rec["cls"])):
            db.execute("INSERT INTO objects VALUES (?,?,?,?,?,?,?,?)", (pid, i, *map(float, box), float(score), int(cls)))
        kp, desc = features.get(pid, (b"", b""))
        digest = format1_digest(path, sha.hex(), boxes, emb, kp, desc) if digests else None
        db.execute("INSERT INTO vectors VALUES (?,?,?,?,?)", (pid, emb, kp, desc, digest))
    db.execute("DROP TABLE photos")
    db.execute("DROP TABLE folders")
    db.execute("DROP TABLE segments")
    db.execute("UPDATE meta SET value='1' WHERE key='format'")
    db.execute("COMMIT")
    db.close()
    for segment in idx.glob("local-*.ivf"):  # format 1 had none
        segment.unlink()


@pytest.mark.parametrize("digests", [True, False], ids=["format1", "format1-before-checksums"])
def test_format1_index_is_upgraded_in_place(tmp_path, digests):
    photos, idx, expected, features = _indexed_keeping_features(tmp_path, 3)
    before = api.info(idx)
    query = photos / "p01.jpg"
    ranking = [(m.image, m.distance) for m in api.search_path(api.open_searcher(idx), query, top=3)]
    store = Store(idx)
    local = store.local_content()
    store.close()
    assert sorted(local) == sorted(features) == [1, 2, 3]
    _rewrite_as_format1(idx, features, digests)
    if digests:  # damage one photo's row in the old format: the upgrade must not vouch for it
        db = sqlite3.connect(idx / "oesir.sqlite")
        (emb,) = db.execute("SELECT embeddings FROM vectors WHERE image_id=2").fetchone()
        db.execute("UPDATE vectors SET embeddings=? WHERE image_id=2", (bytes([emb[0] ^ 1]) + emb[1:],))
        db.commit()
        db.close()
    # a reader opens it first: it is upgraded under the writer lock, its local features coded as a fresh index's
    searcher = api.open_searcher(idx)
    assert searcher.store.local_content() == local
    after = api.info(idx)
    assert (after["generation"], after["objects"], after["photos"]) == (before["generation"], before["objects"], 3)
    assert before["format"] == after["format"] == 3
    r = runner.invoke(app, ["check", "--index", str(idx), "--json"])
    if digests:
        assert r.exit_code == 1 and [d["path"] for d in json.loads(r.stdout)["damaged_photos"]] == [str(photos / "p01.jpg")]
        assert runner.invoke(app, ["check", "--index", str(idx), "--repair"]).exit_code == 0
        assert api.index([photos], index_dir=idx).added == 1
    else:
        assert r.exit_code == 0, r.output
        assert [(m.image, m.distance) for m in api.search_path(searcher, query, top=3)] == ranking
        assert api.index([photos], index_dir=idx).unchanged == 3
    assert _content(idx) == expected


def test_format1_upgrade_interrupted_keeps_the_old_index(tmp_path, monkeypatch):
    """A failure half-way through the upgrade leaves the format-1 index as it was; the next open upgrades it."""
    from oesir_cli import upgrade

    photos, idx, expected, features = _indexed_keeping_features(tmp_path, 3)
    _rewrite_as_format1(idx, features)
    before = sqlite3.connect(idx / "oesir.sqlite").execute("SELECT count(*) FROM objects").fetchone()[0]
    calls = []

    def failing(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt  # as Ctrl-C in the middle of the rewrite
        return pack(*args, **kwargs)

    pack = upgrade.pack_objects
    monkeypatch.setattr(upgrade, "pack_objects", failing)
    with pytest.raises(KeyboardInterrupt):
        Store(idx)
    db = sqlite3.connect(idx / "oesir.sqlite")
    tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert {"images", "objects", "vectors"} <= tables and "photos" not in tables
    assert db.execute("SELECT count(*) FROM objects").fetchone()[0] == before
    db.close()
    monkeypatch.setattr(upgrade, "pack_objects", pack)
    assert _content(idx) == expected
    assert runner.invoke(app, ["check", "--index", str(idx)]).exit_code == 0
