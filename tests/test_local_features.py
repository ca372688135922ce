"""The compact local-feature stage: vocabulary coding, segment files, the store's segments, the format upgrade.

Real RootSIFT of generated photos and the shipped vocabulary; no networks, so these run in seconds.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path

import cv2
import numpy as np
import pytest

from oesir_cli.errors import StoreError
from oesir_cli.keypoints import extract, mirrored
from oesir_cli.local_index import Neighbours
from oesir_cli.postings import FANOUT, GEOMETRY, Entries, Segment, pack_geometry, unpack_geometry, write_segment
from oesir_cli.registry import verified_file
from oesir_cli.store import Store
from oesir_cli.vocabulary import VOCABULARY_FILE, Vocabulary, as_float


@pytest.fixture(scope="module")
def vocabulary() -> Vocabulary:
    return Vocabulary.load(verified_file(VOCABULARY_FILE)[0])


def _photo(seed: int, size: tuple[int, int] = (240, 320)) -> np.ndarray:
    """A textured photo: random rectangles and circles of random colours, blurred a little."""
    rng = np.random.default_rng(seed)
    img = np.full((*size, 3), 128, np.uint8)
    for _ in range(60):
        x, y = int(rng.integers(0, size[1])), int(rng.integers(0, size[0]))
        colour = tuple(int(c) for c in rng.integers(0, 256, 3))
        if rng.random() < 0.5:
            cv2.rectangle(img, (x, y), (x + int(rng.integers(5, 60)), y + int(rng.integers(5, 60))), colour, -1)
        else:
            cv2.circle(img, (x, y), int(rng.integers(3, 30)), colour, -1)
    return cv2.GaussianBlur(img, (3, 3), 0)


def test_nearest_word_is_the_nearest_centroid_within_the_probed_cells(vocabulary):
    x = as_float(extract(_photo(0), 300).descriptors)
    words = vocabulary.nearest_words(x, probes=3, coarse_probes=2)
    d = ((x[:, None, :] - vocabulary.centroids[None]) ** 2).sum(-1)  # [N, words] brute force
    cells = np.argsort(((x[:, None, :] - vocabulary.coarse[None]) ** 2).sum(-1), axis=1)[:, :2]
    fine = vocabulary.fine.shape[1]
    for i in range(len(x)):
        allowed = (cells[i][:, None] * fine + np.arange(fine)[None]).ravel()
        best = allowed[np.argsort(d[i, allowed], kind="stable")[:3]]
        assert np.allclose(d[i, words[i]], d[i, best], atol=1e-5)
    # a stored descriptor goes where a query at its place looks first
    assert np.array_equal(vocabulary.nearest_words(x)[:, 0], vocabulary.nearest_words(x, probes=3)[:, 0])


def test_codes_are_the_nearest_pq_centroid_of_each_residual_sub_vector(vocabulary):
    x = as_float(np.concatenate([extract(_photo(s), 1000).descriptors for s in range(4)]))
    x = np.concatenate([x, x[::-1] * 0.9, x * 1.1, x[::-1]] * 2)  # more rows than one coding block
    words = vocabulary.nearest_words(x)[:, 0]
    codes = vocabulary.encode(x, words)
    m, k, sub = vocabulary.pq.shape
    r = (x - vocabulary.centroids[words]).reshape(len(x), m, sub)
    d = ((r[:, :, None, :] - vocabulary.pq[None]) ** 2).sum(-1)  # [N, M, 256] brute force
    got = np.take_along_axis(d, codes[:, :, None].astype(np.int64), 2)[..., 0]
    assert len(x) > 4096
    assert np.allclose(got, d.min(2), atol=1e-6)


def test_codes_are_compact_and_their_distances_track_true_ones(vocabulary):
    a = extract(_photo(1), 400).descriptors
    b = extract(cv2.resize(_photo(1), None, fx=0.8, fy=0.8), 400).descriptors
    xa, xb = as_float(a), as_float(b)
    words = vocabulary.nearest_words(xb)[:, 0]
    codes = vocabulary.encode(xb, words)
    assert codes.shape == (len(xb), 16) and codes.dtype == np.uint8
    approx = vocabulary.decode(words, codes)
    assert np.mean(((approx - xb) ** 2).sum(1)) < 0.25 * np.mean(((xb - xb.mean(0)) ** 2).sum(1))
    # pair term + table sums at the codes + stored norm = the distance to the decoded descriptor
    pair, tables = vocabulary.query_terms(xa[:5], np.broadcast_to(words, (5, len(words))))
    norms = vocabulary.norms(words, codes).astype(np.float32) / 255.0 + 0.5
    adc = pair + tables[:, np.arange(16)[None, :], codes].sum(-1) + norms[None]  # [5, len(xb)]
    direct = ((xa[:5, None] - approx[None]) ** 2).sum(-1)
    assert np.allclose(adc, direct, atol=3e-3)  # the norm's 1/255 steps
    # nearest neighbours by coded distance agree with exact ones for most keypoints
    exact = ((xa[:, None] - xb[None]) ** 2).sum(-1).argmin(1)
    coded = ((xa[:, None] - approx[None]) ** 2).sum(-1).argmin(1)
    assert (exact == coded).mean() > 0.8


def test_geometry_keeps_position_to_a_pixel():
    kp = np.array([[10.4, 20.6, 3.0, 45.0], [639.5, 0.2, 40.0, 359.0], [70000, -5, 0.5, 180.0]], np.float32)
    back = unpack_geometry(pack_geometry(kp))
    assert GEOMETRY.itemsize == 6
    assert np.allclose(back[:2, :2], np.rint(kp[:2, :2]))
    assert back[2, 0] == 65535 and back[2, 1] == 0  # clipped to what 16 bits hold
    assert np.allclose(back[:2, 2], kp[:2, 2], rtol=0.05) and np.allclose(back[:2, 3], kp[:2, 3] % 360, atol=1.5)


def _random_entries(seed: int, n: int, words: int, photos: int) -> Entries:
    rng = np.random.default_rng(seed)
    return Entries(
        rng.integers(1, photos + 1, n).astype(np.int64),
        rng.integers(0, words, n).astype(np.int64),
        rng.integers(0, 256, (n, 16)).astype(np.uint8),
        rng.integers(0, 256, n).astype(np.uint8),
        pack_geometry(rng.uniform(0, 300, (n, 4))),
    )


def test_segment_round_trip_and_list_ranges(tmp_path):
    n, words = 500, 64
    e = _random_entries(0, n, words, photos=8)
    write_segment(tmp_path / "s.ivf", e, words)
    seg = Segment(tmp_path / "s.ivf")
    assert seg.count == n and seg.words == words
    pair, entry = seg.ranges(np.array([5, 0, 5]))
    for p, w in enumerate([5, 0, 5]):
        got = np.sort(np.asarray(seg.code[entry[pair == p]]).view("V16").ravel())
        want = np.sort(e.code[e.word == w].view("V16").ravel())
        assert np.array_equal(got, want)
    back = seg.all_entries()
    key = lambda x: np.lexsort((x.geometry["xy"][:, 0], x.code[:, 0], x.image, x.word))  # noqa: E731
    for f in ("image", "word", "code", "norm", "geometry"):
        assert np.array_equal(getattr(back, f)[key(back)], getattr(e, f)[key(e)])
    assert np.array_equal(seg.photos[seg.local.astype(np.int64)], back.image) and seg.local.dtype == np.uint16
    (tmp_path / "bad.ivf").write_bytes(b"not a segment")
    with pytest.raises(ValueError):
        Segment(tmp_path / "bad.ivf")


def _resident_kb(path: Path) -> int | None:
    """Resident kB of this process's mappings of `path` (Linux /proc), None where it cannot be read."""
    try:
        lines = Path("/proc/self/smaps").read_text().splitlines()
    except OSError:
        return None
    total, inside = 0, False
    for line in lines:
        head = line.split()
        if head and "-" in head[0] and len(head) >= 5:  # a mapping's first line: address range ... [path]
            inside = line.endswith(str(path))
        elif inside and line.startswith("Rss:"):
            total += int(head[1])
    return total


def test_a_released_segment_reads_the_same_and_holds_no_pages(tmp_path):
    n, words = 40_000, 16
    e = _random_entries(1, n, words, photos=899)
    path = tmp_path / "s.ivf"
    write_segment(path, e, words)
    seg = Segment(path)
    first = np.asarray(seg.code).copy(), np.asarray(seg.geometry).copy()
    resident = _resident_kb(path.resolve())
    seg.release()
    after = _resident_kb(path.resolve())
    assert np.array_equal(np.asarray(seg.code), first[0]) and np.array_equal(np.asarray(seg.geometry), first[1])
    if resident is not None:
        assert resident >= n * 16 // 1024 and after == 0


def test_a_search_that_releases_its_lists_finds_the_same_neighbours(tmp_path, monkeypatch):
    import oesir_cli.local_index as local_index

    photos = [_photo(40 + i) for i in range(3)]
    store, _ = _store_with_photos(tmp_path / "idx", photos)
    try:
        catalogue = store.load_all()
        query = extract(cv2.resize(photos[1], None, fx=0.8, fy=0.8), 300).descriptors
        monkeypatch.setattr(local_index, "QUERY_BLOCK", 16)
        kept = store.local_index(catalogue).probe(query, k=5)
        monkeypatch.setattr(local_index, "RESIDENT_SEGMENT_BYTES", 0)
        released = store.local_index(catalogue).probe(query, k=5)
        assert len(query) > local_index.QUERY_BLOCK and len(kept.photo) > 0  # several blocks, a release after each
        for field in ("q", "photo", "dist", "xy", "kth"):
            assert np.array_equal(getattr(kept, field), getattr(released, field))
    finally:
        store.close()


def test_scan_blocks_keep_each_block_within_its_budget():
    from oesir_cli.local_index import scan_blocks

    assert scan_blocks(np.array([5, 5, 20, 1, 1, 1]), rows=2, budget=10) == [(0, 2), (2, 3), (3, 5), (5, 6)]
    assert scan_blocks(np.array([5, 5, 20, 1, 1, 1]), rows=8, budget=10) == [(0, 2), (2, 3), (3, 6)]
    assert scan_blocks(np.zeros(0, np.int64), rows=4, budget=10) == []
    with pytest.raises(ValueError):
        scan_blocks(np.array([1, -1]), rows=4, budget=10)


def _sorted(found: Neighbours) -> tuple[np.ndarray, ...]:
    order = np.lexsort((found.xy[:, 1], found.xy[:, 0], found.dist, found.photo, found.q))
    return found.q[order], found.photo[order], found.dist[order], found.xy[order]


def test_short_scan_blocks_and_a_cap_per_keypoint_keep_the_votes(tmp_path, monkeypatch):
    """Blocks cut by entries find exactly what fixed blocks find; keeping only each keypoint's k nearest
    entries (the cap a large collection needs) leaves every vote as it was."""
    import oesir_cli.local_index as local_index
    from oesir_cli.search.evidence import Votes

    photos = [_photo(50 + i) for i in range(4)]
    store, _ = _store_with_photos(tmp_path / "idx", photos)
    try:
        catalogue = store.load_all()
        query = extract(cv2.resize(photos[2], None, fx=0.85, fy=0.85), 300).descriptors
        whole = store.local_index(catalogue).probe(query, k=5)
        monkeypatch.setattr(local_index, "SCAN_ENTRIES", 50)
        short = store.local_index(catalogue).probe(query, k=5)
        for a, b in zip(_sorted(whole), _sorted(short)):
            assert np.array_equal(a, b)
        assert np.array_equal(whole.kth, short.kth)
        monkeypatch.setattr(local_index, "KEEP_PER_KEYPOINT", 5)
        capped = store.local_index(catalogue).probe(query, k=5)
        assert len(capped.q) < len(whole.q) and np.bincount(capped.q).max() <= 5 + 2  # ties at the cap stay
        a, b = Votes.from_neighbours(whole, len(photos), 0.7), Votes.from_neighbours(capped, len(photos), 0.7)
        assert b.counts.sum() > 0 and np.array_equal(a.counts, b.counts)
        assert np.array_equal(np.sort(a.q_idx), np.sort(b.q_idx))
    finally:
        store.close()


def test_matches_take_the_photo_nearest_entry_by_a_ratio_test():
    # query 0: photo 1 at 0.1 and 0.5 -> kept; photo 2 at 0.3 and 0.31 -> ambiguous, dropped
    # query 1: photo 1 once at 0.2, its k-th overall 1.0 -> kept
    found = Neighbours(
        q=np.array([0, 0, 0, 0, 1]),
        photo=np.array([1, 1, 2, 2, 1]),
        dist=np.array([0.1, 0.5, 0.3, 0.31, 0.2], np.float32),
        xy=np.arange(10, dtype=np.float64).reshape(5, 2),
        kth=np.array([0.5, 1.0], np.float32),
    )
    q, xy = found.matches(1, 0.8)
    assert q.tolist() == [0, 1] and xy.tolist() == [[0, 1], [8, 9]]
    assert found.matches(2, 0.8)[0].tolist() == []
    assert found.ratio_votes(0.7).tolist() == [0, 2, 3, 4]  # under 0.7 x k-th: 0.35 for query 0, 0.7 for query 1


def test_kth_smallest_per_query_with_the_floor_for_sparse_lists():
    from oesir_cli.local_index import SPARSE_KTH, _kth_smallest

    rng = np.random.default_rng(3)
    q = rng.integers(0, 40, 2000)
    q[q == 7] = 8  # query 7 finds nothing
    q[np.flatnonzero(q == 9)[2:]] = 10  # query 9 finds two entries
    dist = rng.random(2000).astype(np.float32)
    got = _kth_smallest(q, dist, 40, 5)
    for i in range(40):
        d = np.sort(dist[q == i])
        want = np.inf if len(d) == 0 else d[4] if len(d) >= 5 else max(d[-1], SPARSE_KTH)
        assert got[i] == np.float32(want), i


def _store_with_photos(directory: Path, photos: list[np.ndarray]) -> tuple[Store, list[int]]:
    store = Store(directory, create=True)
    with store.transaction() as db:
        store.set_meta("model_version", "m@1")
        store.set_meta("embedding_dim", "4")
    ids = []
    for i, rgb in enumerate(photos):
        f = extract(rgb, 300)
        with store.transaction() as db:
            db.execute("INSERT OR IGNORE INTO folders(id, path) VALUES (1, '/p')")
            image_id = db.execute(
                "INSERT INTO photos(folder, name, sha256, size, mtime_ns, width, height, indexed_at, objects, embeddings, digest)"
                " VALUES (1, ?, ?, 1, 1, ?, ?, 0, x'', x'', x'')",
                (f"{i}.jpg", bytes(32), rgb.shape[1], rgb.shape[0]),
            ).lastrowid
            store.add_local_features(db, [(image_id, f.keypoints, f.descriptors)])
        ids.append(image_id)
    return store, ids


def test_segments_merge_by_level_and_a_search_finds_each_photo(tmp_path):
    photos = [_photo(10 + i) for i in range(FANOUT + 2)]
    store, ids = _store_with_photos(tmp_path / "idx", photos)
    try:
        levels = sorted(level for _, _, level, _ in store.segments())
        assert levels == [0] * (FANOUT + 2)
        before = store.local_content()
        assert store.merge_segments() == 1
        assert sorted(level for _, _, level, _ in store.segments()) == [0, 0, 1]
        assert store.local_content() == before  # merging moves entries, never changes them
        assert len(list(store.dir.glob("local-*.ivf"))) == 3
        catalogue = store.load_all()
        local = store.local_index(catalogue)
        for p, rgb in enumerate(photos):  # a rescaled copy of each photo votes for it first, and its mirror image too
            f = extract(cv2.resize(rgb, None, fx=0.9, fy=0.9), 300)
            found = local.probe(f.descriptors, k=5)
            votes = np.bincount(found.photo[found.ratio_votes(0.7)], minlength=len(photos))
            assert votes.argmax() == p
            flipped = extract(np.ascontiguousarray(cv2.resize(rgb, None, fx=0.9, fy=0.9)[:, ::-1]), 300)
            found = local.probe(mirrored(flipped, flipped.keypoints[:, 0].max() + 1).descriptors, k=5)
            votes = np.bincount(found.photo[found.ratio_votes(0.7)], minlength=len(photos))
            assert votes.argmax() == p
    finally:
        store.close()


def test_a_replaced_photo_s_old_entries_are_never_live(tmp_path):
    store, ids = _store_with_photos(tmp_path / "idx", [_photo(1), _photo(2)])
    try:

        def votes_of_photo_1() -> np.ndarray:
            found = store.local_index(store.load_all()).probe(extract(_photo(1), 300).descriptors, k=5)
            return np.bincount(found.photo[found.ratio_votes(0.7)], minlength=2)

        before = votes_of_photo_1()
        f = extract(_photo(3), 300)
        with store.transaction() as db:  # photo 1 re-described: its entries move to a new segment
            store.add_local_features(db, [(ids[0], f.keypoints, f.descriptors)])
        after = votes_of_photo_1()
        assert before[0] > 100 and after[0] < before[0] / 10  # the old photo's keypoints no longer count for it
        with store.transaction() as db:
            store.delete_ids(db, [ids[1]])
        store.merge_segments()  # drops the segment nobody uses
        assert len(store.segments()) == 1 and list(store.local_content()) == [ids[0]]
    finally:
        store.close()


def test_orphan_and_damaged_segments(tmp_path):
    store, ids = _store_with_photos(tmp_path / "idx", [_photo(1), _photo(2)])
    try:
        (store.dir / "local-deadbeef.ivf").write_bytes(b"left by a killed writer")
        store.prepare_for_writing()
        assert not (store.dir / "local-deadbeef.ivf").exists()
        assert store.damaged_segments() == []
        _, file, _, _ = store.segments()[0]
        data = bytearray((store.dir / file).read_bytes())
        data[-10] ^= 0xFF
        (store.dir / file).write_bytes(bytes(data))
        bad = store.damaged_segments()
        assert [b[1] for b in bad] == [file]
        assert [i for i, _ in store.photos_in_segments([bad[0][0]])] == [ids[0]]
        (store.dir / file).unlink()
        with pytest.raises(StoreError, match="missing or damaged.*check --repair"):
            store.local_index(store.load_all())
    finally:
        store.close()


FORMAT2_PHOTOS = """CREATE TABLE photos (id INTEGER PRIMARY KEY, folder INTEGER NOT NULL REFERENCES folders(id),
name NOT NULL, sha256 BLOB NOT NULL, size INTEGER NOT NULL, mtime_ns INTEGER NOT NULL, width INTEGER NOT NULL,
height INTEGER NOT NULL, indexed_at INTEGER NOT NULL, objects BLOB NOT NULL, embeddings BLOB NOT NULL,
keypoints BLOB, descriptors BLOB, digest BLOB NOT NULL)"""


def test_a_format_2_index_is_upgraded_in_place_to_the_same_features(tmp_path):
    from oesir_cli.schema import row_digest

    photos = [_photo(20 + i) for i in range(3)]
    fresh, _ = _store_with_photos(tmp_path / "fresh", photos)
    want = sorted(fresh.local_content().values())
    fresh.close()
    old = tmp_path / "old"
    old.mkdir()
    db = sqlite3.connect(old / "oesir.sqlite")
    db.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    db.execute("CREATE TABLE folders (id INTEGER PRIMARY KEY, path NOT NULL UNIQUE)")
    db.execute(FORMAT2_PHOTOS)
    db.executemany("INSERT INTO meta VALUES (?, ?)", [("format", "2"), ("model_version", "m@1"), ("embedding_dim", "4")])
    db.execute("INSERT INTO folders VALUES (1, '/p')")
    for i, rgb in enumerate(photos):
        f = extract(rgb, 300)
        kp, desc = f.keypoints.tobytes(), f.descriptors.tobytes()
        digest = row_digest(f"/p/{i}.jpg", "00" * 32, b"", b"", kp, desc)
        db.execute(
            "INSERT INTO photos VALUES (?, 1, ?, ?, 1, 1, ?, ?, 0, x'', x'', ?, ?, ?)",
            (i + 1, f"{i}.jpg", bytes(32), rgb.shape[1], rgb.shape[0], kp, desc, digest),
        )
    db.commit()
    db.close()
    (old / "local.hnsw").write_bytes(b"format 2's graph")
    store = Store(old)
    try:
        assert store.meta("format") == "3" and not (old / "local.hnsw").exists()
        assert sorted(store.local_content().values()) == want
        assert store.damaged_rows() == []  # digests re-made for the rows without their descriptors
        assert store.db.execute("SELECT count(*) FROM photos WHERE descriptors IS NOT NULL").fetchone()[0] == 0
    finally:
        store.close()
