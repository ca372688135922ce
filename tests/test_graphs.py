"""Derived structures: the stamp check, which structures an index needs, reuse versus rebuild.

Small synthetic catalogues, no models: these run in about a second.
"""

from __future__ import annotations

import errno
import json
from pathlib import Path

import numpy as np
import pytest

from oesir_cli import ann, graphs
from oesir_cli.ann import Graph
from oesir_cli.codec import Codec
from oesir_cli.errors import DiskFullError
from oesir_cli.store import Catalogue, Store, check_stamp, save_stamped, stamp_path, writer_lock

STAMP = {"generation": 3, "model_version": "m@1", "kind": "objects", "codec": "float32"}


def _catalogue(n_objects: int = 6, generation: int = 1, seed: int = 0) -> Catalogue:
    """Two photos' worth of random rows (float32 codes of 8-d embeddings), without local features."""
    rng = np.random.default_rng(seed)
    codec = Codec("float32", 8)
    return Catalogue(
        image_ids=np.array([1, 2], np.int64),
        paths=["/a.jpg", "/b.jpg"],
        sizes=np.array([[64, 48], [64, 48]], np.int32),
        object_image=np.repeat(np.array([0, 1], np.int32), [n_objects // 2, n_objects - n_objects // 2]),
        object_index=np.r_[np.arange(n_objects // 2), np.arange(n_objects - n_objects // 2)].astype(np.int32),
        object_boxes=np.zeros((n_objects, 4), np.float32),
        codes=codec.encode(rng.normal(size=(n_objects, 8)).astype(np.float32)),
        codec=codec,
        segment_of=np.zeros(2, np.int64),
        segments=[],
        generation=generation,
    )


@pytest.fixture()
def store(tmp_path: Path) -> Store:
    s = Store(tmp_path / "idx", create=True)
    with s.transaction():
        s.set_meta("model_version", "m@1")
    yield s
    s.close()


def _saved_graph(path: Path, stamp: dict = STAMP) -> Graph:
    graph = Graph.build(np.random.default_rng(1).normal(size=(20, 4)).astype(np.float32))
    graph.save(path, stamp)
    return graph


def test_stamp_check_current_stale_damaged_missing(tmp_path):
    path = tmp_path / "objects.hnsw"
    assert check_stamp(path, STAMP) == ("missing", None)
    _saved_graph(path)
    status, saved = check_stamp(path, STAMP, hash_bytes=True)
    assert status == "ok" and saved["count"] == 20 and saved["bytes"] == path.stat().st_size
    assert check_stamp(path, {**STAMP, "generation": 4})[0] == "stale"
    assert check_stamp(path, {**STAMP, "model_version": "m@2"})[0] == "stale"
    assert check_stamp(path, {**STAMP, "codec": "float16"})[0] == "stale"

    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # same size, other bytes: only hashing tells
    path.write_bytes(bytes(data))
    assert check_stamp(path, STAMP)[0] == "ok"
    assert check_stamp(path, STAMP, hash_bytes=True)[0] == "damaged"
    path.write_bytes(bytes(data[:100]))  # truncated: the size tells at every open
    assert check_stamp(path, STAMP)[0] == "damaged"
    assert Graph.load(path, STAMP, 4) is None

    stamp_path(path).write_text("{not json")
    assert check_stamp(path, STAMP)[0] == "missing"
    stamp_path(path).write_text("[1, 2]")
    assert check_stamp(path, STAMP)[0] == "missing"
    _saved_graph(path)
    path.unlink()
    assert check_stamp(path, STAMP)[0] == "missing"


def test_saved_stamp_keeps_its_format(store, monkeypatch):
    """Indexes written by earlier versions carry exactly these stamps; a change here would rebuild their graphs."""
    catalogue = _catalogue(generation=7)

    class FakeStore:
        def meta(self, key: str) -> str:
            return {"model_version": "m@1"}[key]

    stamp = graphs.graph_stamp(FakeStore(), catalogue, "objects")
    assert stamp == {"generation": 7, "model_version": "m@1", "kind": "objects", "codec": "float32"}
    assert list(stamp) == ["generation", "model_version", "kind", "codec"]
    monkeypatch.setattr(graphs, "EXACT_OBJECTS_MAX", 0)
    graphs.load_graphs(store, catalogue, writable=True)
    saved = json.loads(stamp_path(store.dir / "objects.hnsw").read_text())
    assert list(saved) == ["generation", "model_version", "kind", "codec", "rows", "count", "bytes", "sha256"]
    assert {k: saved[k] for k in stamp} == stamp and saved["count"] == 6
    assert saved["rows"] == graphs.rows_digest(catalogue)(6)


def test_no_object_structure_up_to_exact_objects_max(store, monkeypatch):
    catalogue = _catalogue(n_objects=6)
    monkeypatch.setattr(graphs, "EXACT_OBJECTS_MAX", 6)
    assert graphs.needed_graphs(store, catalogue) == {} and graphs.graph_statuses(store, catalogue) == {}
    assert graphs.load_graphs(store, catalogue, writable=True) is None
    assert not any((store.dir / name).exists() for name in ("objects.hnsw", "objects.hnsw.json"))

    monkeypatch.setattr(graphs, "EXACT_OBJECTS_MAX", 5)
    assert list(graphs.needed_graphs(store, catalogue)) == ["objects.hnsw"]
    assert graphs.needed_graphs(store, catalogue)["objects.hnsw"]["codec"] == "float32"
    objects = graphs.load_graphs(store, catalogue, writable=True)
    assert objects is not None and objects.count == 6 and (store.dir / "objects.hnsw.json").exists()

    monkeypatch.setattr(graphs, "EXACT_OBJECTS_MAX", 6)  # no longer needed: a writer removes the leftover
    assert graphs.load_graphs(store, catalogue, writable=False) is None
    assert (store.dir / "objects.hnsw").exists()  # a reader that may not write leaves it
    graphs.load_graphs(store, catalogue, writable=True)
    assert not (store.dir / "objects.hnsw").exists() and not (store.dir / "objects.hnsw.json").exists()


def test_saved_graph_is_reused_and_a_new_generation_rebuilds(store, monkeypatch):
    monkeypatch.setattr(graphs, "EXACT_OBJECTS_MAX", 0)
    catalogue = _catalogue()
    graphs.load_graphs(store, catalogue, writable=True)
    path = store.dir / "objects.hnsw"
    files = {p: p.stat().st_mtime_ns for p in (path, stamp_path(path))}
    assert graphs.graph_statuses(store, catalogue) == {"objects.hnsw": "ok"}

    builds = []
    real_build = ann.Graph.build.__func__

    def counting_build(cls, *args, **kwargs):
        builds.append(1)
        return real_build(cls, *args, **kwargs)

    monkeypatch.setattr(ann.Graph, "build", classmethod(counting_build))
    objects = graphs.open_graphs_for_reading(store, catalogue)
    assert builds == [] and objects.count == 6
    assert {p: p.stat().st_mtime_ns for p in files} == files

    newer = _catalogue(generation=2, seed=1)  # other rows: rebuilt, never extended
    assert graphs.graph_statuses(store, newer) == {"objects.hnsw": "stale"}
    with writer_lock(store.dir):  # a reader under a writer: rebuilt in memory only
        assert graphs.open_graphs_for_reading(store, newer).count == 6
    assert len(builds) == 1 and graphs.graph_statuses(store, newer) == {"objects.hnsw": "stale"}
    assert {p: p.stat().st_mtime_ns for p in files} == files
    graphs.load_graphs(store, newer, writable=False)  # the same, asked for directly
    assert len(builds) == 2 and graphs.graph_statuses(store, newer) == {"objects.hnsw": "stale"}
    graphs.open_graphs_for_reading(store, newer)  # no writer at work: the reader saves what it rebuilt
    assert len(builds) == 3 and graphs.graph_statuses(store, newer) == {"objects.hnsw": "ok"}
    assert json.loads(stamp_path(path).read_text())["generation"] == 2
    graphs.load_graphs(store, newer, writable=True)
    assert len(builds) == 3  # now current: reused


def _grown(catalogue: Catalogue, extra: int, generation: int) -> Catalogue:
    """`catalogue` with a third photo of `extra` new rows appended, as adding a photo leaves it."""
    rng = np.random.default_rng(generation)
    codec = catalogue.codec
    new = codec.encode(rng.normal(size=(extra, codec.dim)).astype(np.float32)) if codec.name == "float32" else (
        rng.integers(0, 256, (extra, codec.code_size)).astype(np.uint8))  # fmt: skip
    return Catalogue(
        image_ids=np.r_[catalogue.image_ids, catalogue.image_ids.max() + 1],
        paths=[*catalogue.paths, "/c.jpg"],
        sizes=np.r_[catalogue.sizes, [[64, 48]]].astype(np.int32),
        object_image=np.r_[catalogue.object_image, np.full(extra, len(catalogue.paths))].astype(np.int32),
        object_index=np.r_[catalogue.object_index, np.arange(extra)].astype(np.int32),
        object_boxes=np.zeros((len(catalogue.codes) + extra, 4), np.float32),
        codes=np.r_[catalogue.codes, new],
        codec=codec,
        segment_of=np.zeros(len(catalogue.paths) + 1, np.int64),
        segments=[],
        generation=generation,
    )


def _without_first_photo(catalogue: Catalogue, generation: int) -> Catalogue:
    keep = catalogue.object_image != 0
    return Catalogue(
        image_ids=catalogue.image_ids[1:], paths=catalogue.paths[1:], sizes=catalogue.sizes[1:],
        object_image=catalogue.object_image[keep] - 1, object_index=catalogue.object_index[keep],
        object_boxes=catalogue.object_boxes[keep], codes=catalogue.codes[keep], codec=catalogue.codec,
        segment_of=catalogue.segment_of[1:], segments=[], generation=generation,
    )  # fmt: skip


def _pq_catalogue() -> Catalogue:
    from oesir_cli.codec import train_codebook

    rng = np.random.default_rng(5)
    train = rng.normal(size=(600, 16)).astype(np.float32)
    codec = Codec("pq", 16, train_codebook(train, m=4, k=256, iterations=4))
    base = _catalogue(n_objects=400)
    return Catalogue(**{**base.__dict__, "codec": codec, "codes": codec.encode(train[:400])})


@pytest.mark.parametrize("structure", ["objects.hnsw", "objects.ivfpq"])
def test_added_photos_extend_the_object_structure_and_a_removal_rebuilds_it(structure, store, monkeypatch):
    """Adding photos appends their rows to the saved structure: it is never rebuilt for them. Removing a photo
    moves the rows after it: that rebuilds it (its row numbers would be wrong)."""
    from oesir_cli import ivf

    if structure == "objects.ivfpq" and not ivf.available():
        pytest.skip("faiss not installed")
    monkeypatch.setattr(graphs, "EXACT_OBJECTS_MAX", 0)
    catalogue = _catalogue(n_objects=6) if structure == "objects.hnsw" else _pq_catalogue()
    assert graphs.object_structure(catalogue) == structure
    graphs.load_graphs(store, catalogue, writable=True)
    builds = []
    real = {"graph": ann.Graph.build.__func__, "ivf": ivf.IVFPQ.create.__func__}
    monkeypatch.setattr(ann.Graph, "build", classmethod(lambda cls, *a, **k: builds.append(1) or real["graph"](cls, *a, **k)))
    monkeypatch.setattr(ivf.IVFPQ, "create", classmethod(lambda cls, *a, **k: builds.append(1) or real["ivf"](cls, *a, **k)))

    grown = _grown(catalogue, extra=5, generation=2)
    assert graphs.graph_statuses(store, grown) == {structure: "stale"}
    objects = graphs.load_graphs(store, grown, writable=True)
    n = len(grown.codes)
    assert builds == [] and objects.count == n and graphs.graph_statuses(store, grown) == {structure: "ok"}
    saved = json.loads(stamp_path(store.dir / structure).read_text())
    assert saved["generation"] == 2 and saved["count"] == n and saved["rows"] == graphs.rows_digest(grown)(n)
    rows, _ = objects.knn(grown.codec.decode(grown.codes[-5:]), 1)
    assert list(rows[:, 0]) == list(range(n - 5, n))  # each new row is found as itself

    again = _grown(grown, extra=3, generation=3)  # a reader with no writer at work extends and saves it too
    assert graphs.open_graphs_for_reading(store, again).count == n + 3 and builds == []
    assert graphs.graph_statuses(store, again) == {structure: "ok"}

    fewer = _without_first_photo(again, generation=4)
    assert graphs.load_graphs(store, fewer, writable=True).count == len(fewer.codes) and builds == [1]
    recoded = Catalogue(**{**fewer.__dict__, "codes": fewer.codes[::-1].copy(), "generation": 5})
    graphs.load_graphs(store, recoded, writable=True)
    assert builds == [1, 1]  # same photos, other codes: rebuilt


def test_grown_from_refuses_what_it_cannot_vouch_for(store, monkeypatch):
    """Only a structure whose rows are the data's first rows, at its stamped size, is extended."""
    from oesir_cli.store import grown_from

    monkeypatch.setattr(graphs, "EXACT_OBJECTS_MAX", 0)
    catalogue = _catalogue(n_objects=6)
    graphs.load_graphs(store, catalogue, writable=True)
    path = store.dir / "objects.hnsw"
    stamp = graphs.graph_stamp(store, catalogue, "objects")
    grown = _grown(catalogue, extra=2, generation=2)
    wanted = graphs.graph_stamp(store, grown, "objects")
    assert grown_from(path, wanted, graphs.rows_digest(grown)) == (6, stamp)
    assert grown_from(path, {**wanted, "model_version": "m@2"}, graphs.rows_digest(grown)) is None  # another model
    fewer = _without_first_photo(catalogue, generation=3)
    assert grown_from(path, wanted, graphs.rows_digest(fewer)) is None  # fewer rows than it holds
    with open(path, "ab") as fh:  # not the size its stamp says: damaged, never extended
        fh.write(b"x")
    assert grown_from(path, wanted, graphs.rows_digest(grown)) is None
    path.unlink()
    assert grown_from(path, wanted, graphs.rows_digest(grown)) is None


def test_a_full_disk_while_saving_is_typed_and_leaves_the_old_files(tmp_path, monkeypatch):
    path = tmp_path / "objects.hnsw"
    _saved_graph(path)
    before = path.read_bytes(), stamp_path(path).read_bytes()

    def no_space(tmp: Path) -> None:
        tmp.write_bytes(b"partial")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(DiskFullError, match="disk full .*keeps its last committed state"):
        save_stamped(path, no_space, {**STAMP, "generation": 4}, 1)
    assert (path.read_bytes(), stamp_path(path).read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["objects.hnsw", "objects.hnsw.json"]  # no temporary file left

    def full(self: Graph, path: Path, stamp: dict) -> None:
        raise DiskFullError("disk full")

    monkeypatch.setattr(Graph, "save", full)  # saving a rebuilt graph is best effort: it is used all the same
    rows = np.zeros((5, 4), np.float32)
    assert ann.cached_graph(tmp_path / "other.hnsw", rows, STAMP, writable=True).count == 5
