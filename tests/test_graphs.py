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
    assert list(saved) == ["generation", "model_version", "kind", "codec", "count", "bytes", "sha256"]
    assert {k: saved[k] for k in stamp} == stamp and saved["count"] == 6


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

    newer = _catalogue(generation=2)
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
