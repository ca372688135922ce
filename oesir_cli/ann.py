"""hnswlib graphs derived from the stored vectors: build, persist atomically, reload.

A graph is only a cache of what SQLite holds. Its stamp (see
`store.check_stamp`) says which data it was built from; a graph whose stamp
does not match is rebuilt, never trusted.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import hnswlib
import numpy as np

from .errors import DiskFullError
from .store import check_stamp, grown_from, save_stamped


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

    def add(self, rows: np.ndarray, threads: int = -1) -> None:
        """Append rows; their labels continue the row numbers."""
        if len(rows) == 0:
            return
        self.index.resize_index(self.count + len(rows))
        labels = np.arange(self.count, self.count + len(rows))
        self.index.add_items(np.ascontiguousarray(rows, np.float32), labels, num_threads=threads)
        self.count += len(rows)

    def knn(self, queries: np.ndarray, k: int, ef: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Row numbers and squared L2 distances of the k nearest rows, [Q, k] each."""
        k = min(k, self.count)
        if k == 0 or len(queries) == 0:
            return np.zeros((len(queries), 0), np.int64), np.zeros((len(queries), 0), np.float32)
        self.index.set_ef(max(ef or 0, k + 8))
        labels, dists = self.index.knn_query(np.ascontiguousarray(queries, np.float32), k=k)
        return labels.astype(np.int64), dists

    def save(self, path: Path, stamp: dict) -> None:
        """Write graph then stamp (see `store.save_stamped`); `DiskFullError` when the disk is full."""
        save_stamped(path, lambda tmp: self.index.save_index(str(tmp)), stamp, self.count)

    @classmethod
    def load(cls, path: Path, stamp: dict, dim: int) -> Graph | None:
        """The saved graph if its stamp matches `stamp` (and its size; `oesir check` hashes it too), else None."""
        status, saved = check_stamp(path, stamp)
        count = saved.get("count") if saved else None
        if status != "ok" or not isinstance(count, int):
            return None
        index = hnswlib.Index(space="l2", dim=dim)
        try:
            index.load_index(str(path), max_elements=max(1, count))
        except (RuntimeError, OSError, ValueError):
            return None
        if index.get_current_count() != count:
            return None
        return cls(index, count)


def cached_graph(
    path: Path,
    data: np.ndarray | Callable[..., np.ndarray],
    stamp: dict,
    writable: bool,
    shape: tuple[int, int] | None = None,
    digest_of: Callable[[int], str] | None = None,
    **build_args,
) -> Graph:
    """Load the graph at `path` if current, else bring it up to date (and save it when `writable`).

    `data` may be a function that makes the rows from a given row on (all of them
    by default), with their `shape` given: it is then only called when rows must be
    added, which keeps opening an index cheap. With `digest_of` (the digest of the
    data's first n rows, saved in the stamp), a graph built before rows were only
    appended gets the new rows added instead of being rebuilt (`store.grown_from`).
    Saving is best effort (a full disk included): the graph is returned all the
    same, and the next open brings it up to date again.
    """
    n, dim = shape if shape is not None else data.shape  # type: ignore[union-attr]
    graph = Graph.load(path, stamp, int(dim))
    if graph is not None and graph.count == n:
        return graph
    grown = grown_from(path, stamp, digest_of) if digest_of is not None else None
    graph = Graph.load(path, grown[1], int(dim)) if grown is not None else None
    if graph is not None and graph.count == grown[0]:  # type: ignore[index]
        graph.add(data(graph.count) if callable(data) else data[graph.count :])
    else:
        graph = Graph.build(data() if callable(data) else data, **build_args)
    if writable:
        with contextlib.suppress(OSError, DiskFullError):
            graph.save(path, stamp if digest_of is None else {**stamp, "rows": digest_of(n)})
    return graph
