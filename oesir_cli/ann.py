"""hnswlib graphs derived from the stored vectors: build, persist atomically, reload.

A graph is only a cache of what SQLite holds. Its stamp (generation of the
data, count, dimension, model version) says which data it was built from; a
graph whose stamp does not match is rebuilt, never trusted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import hnswlib
import numpy as np

from .registry import sha256_file
from .store import atomic_write, read_stamp, write_stamp


class Graph:
    """An hnswlib L2 index over rows of a matrix; labels are row numbers."""

    def __init__(self, index: hnswlib.Index, count: int):
        self.index = index
        self.count = count

    @classmethod
    def build(cls, data: np.ndarray, m: int = 16, ef_construction: int = 100, threads: int = -1) -> Graph:
        index = hnswlib.Index(space="l2", dim=int(data.shape[1]))
        index.init_index(max_elements=max(1, len(data)), M=m, ef_construction=ef_construction, random_seed=7)
        if len(data):
            index.add_items(np.ascontiguousarray(data, np.float32), np.arange(len(data)), num_threads=threads)
        return cls(index, len(data))

    def knn(self, queries: np.ndarray, k: int, ef: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Row numbers and squared L2 distances of the k nearest rows, [Q, k] each."""
        k = min(k, self.count)
        if k == 0 or len(queries) == 0:
            return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
        self.index.set_ef(max(ef or 0, k + 8))
        labels, dists = self.index.knn_query(np.ascontiguousarray(queries, np.float32), k=k)
        return labels.astype(np.int64), dists

    def save(self, path: Path, stamp: dict) -> None:
        """Write graph then stamp (with the graph's size and sha256), each atomically; a crash leaves a mismatch."""
        atomic_write(path, lambda tmp: self.index.save_index(str(tmp)))
        full = {**stamp, "count": self.count, "bytes": path.stat().st_size, "sha256": sha256_file(path)}
        write_stamp(path.with_suffix(path.suffix + ".json"), full)

    @classmethod
    def load(cls, path: Path, stamp: dict, dim: int) -> Graph | None:
        """The saved graph if its stamp matches `stamp`, else None."""
        saved = read_stamp(path.with_suffix(path.suffix + ".json"))
        if not saved or any(saved.get(k) != v for k, v in stamp.items()) or not path.exists():
            return None
        if path.stat().st_size != saved.get("bytes"):  # cheap check at every load; `oesir check` hashes it
            return None
        index = hnswlib.Index(space="l2", dim=dim)
        try:
            index.load_index(str(path), max_elements=max(1, saved["count"]))
        except (RuntimeError, OSError, ValueError):
            return None
        if index.get_current_count() != saved["count"]:
            return None
        return cls(index, saved["count"])


def graph_status(path: Path, stamp: dict) -> str:
    """'ok', 'missing', 'stale' (built from other data) or 'damaged' (bytes differ from its stamp's sha256)."""
    saved = read_stamp(path.with_suffix(path.suffix + ".json"))
    if saved is None or not path.exists():
        return "missing"
    if any(saved.get(k) != v for k, v in stamp.items()):
        return "stale"
    if path.stat().st_size != saved.get("bytes") or sha256_file(path) != saved.get("sha256"):
        return "damaged"
    return "ok"


def cached_graph(
    path: Path,
    data: np.ndarray | Callable[[], np.ndarray],
    stamp: dict,
    writable: bool,
    shape: tuple[int, int] | None = None,
    **build_args,
) -> Graph:
    """Load the graph at `path` if current, else build it (and save it when `writable`).

    `data` may be a function that makes the rows, with their `shape` given: it is then
    only called when the graph has to be built, which keeps opening an index cheap.
    """
    n, dim = shape if shape is not None else data.shape  # type: ignore[union-attr]
    graph = Graph.load(path, stamp, int(dim))
    if graph is not None and graph.count == n:
        return graph
    rows = data() if callable(data) else data
    graph = Graph.build(rows, **build_args)
    if writable:
        with contextlib.suppress(OSError):
            graph.save(path, stamp)
    return graph
