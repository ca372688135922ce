"""The compressed search structure for large indexes: faiss IVF-PQ over oesir's own PQ codes.

Inverted lists hold each object's 32-byte PQ code (the same codebook the index
stores codes with, so faiss's distances are the codec's asymmetric distances)
and its 8-byte id. A coarse quantizer (k-means centroids, searched through a
small HNSW graph) picks the `nprobe` lists a query object looks in. Codes are
not residuals (`by_residual = False`): a stored code means the same vector in
every list, and the structure can be rebuilt from the stored codes alone (a
code's reconstruction encodes to that same code).

faiss is optional (`pip install 'oesir[scale]'`); nothing else needs it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .codec import Codec
from .errors import DiskFullError
from .store import atomic_write, check_stamp, grown_from, save_stamped

NPROBE = 64  # lists each query object looks in (bench/scale.py: recall vs latency)
_ADD_CHUNK = 262_144


def _faiss():  # noqa: ANN202 - the module
    try:
        import faiss
    except ImportError:  # pragma: no cover - exercised where faiss is missing
        raise RuntimeError("the IVF-PQ structure needs faiss: pip install 'oesir[scale]'") from None
    return faiss


def available() -> bool:
    try:
        _faiss()
    except RuntimeError:
        return False
    return True


class IVFPQ:
    """faiss IndexIVFPQ with a fixed PQ codebook; ids are caller-chosen int64."""

    def __init__(self, index) -> None:  # noqa: ANN001 - a faiss index
        self.index = index

    @classmethod
    def create(cls, centroids: np.ndarray, train: np.ndarray, nlist: int, seed: int = 0, threads: int = 0) -> IVFPQ:
        """Empty structure: `centroids` [m, 256, d/m] is the PQ codebook, `train` vectors fit the coarse k-means."""
        faiss = _faiss()
        if threads:
            faiss.omp_set_num_threads(threads)
        m, k, sub = centroids.shape
        d = m * sub
        quantizer = faiss.IndexHNSWFlat(d, 32)
        index = faiss.IndexIVFPQ(quantizer, d, nlist, m, int(np.log2(k)))
        index.by_residual = False
        km = faiss.Kmeans(d, nlist, niter=12, seed=seed, max_points_per_centroid=64)
        km.train(np.ascontiguousarray(train, np.float32))
        quantizer.add(km.centroids)
        faiss.copy_array_to_vector(np.ascontiguousarray(centroids, np.float32).ravel(), index.pq.centroids)
        index.is_trained = True
        return cls(index)

    def add(self, vectors: np.ndarray, ids: np.ndarray) -> None:
        """Add vectors (encoded here with the fixed codebook: a PQ reconstruction keeps its code)."""
        self.index.add_with_ids(np.ascontiguousarray(vectors, np.float32), np.ascontiguousarray(ids, np.int64))

    @property
    def count(self) -> int:
        return int(self.index.ntotal)

    def search(self, queries: np.ndarray, k: int, nprobe: int) -> tuple[np.ndarray, np.ndarray]:
        """Ids [Q, k] (-1 where fewer found) and asymmetric squared L2 distances [Q, k]."""
        self.index.nprobe = nprobe
        quantizer = _faiss().downcast_index(self.index.quantizer)
        if hasattr(quantizer, "hnsw"):  # the graph over the list centroids must look at least as wide as nprobe
            quantizer.hnsw.efSearch = max(64, 2 * nprobe)
        dist, ids = self.index.search(np.ascontiguousarray(queries, np.float32), k)
        return ids, dist

    def knn(self, queries: np.ndarray, k: int, ef: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Same contract as `ann.Graph.knn` (rows, squared distances); -1 rows are dropped by the caller."""
        return self.search(queries, min(k, self.count), NPROBE)

    def save(self, path: Path, stamp: dict | None = None) -> None:
        """Write atomically; with `stamp`, then its stamp, like `ann.Graph.save` (see `store.save_stamped`)."""
        write = lambda tmp: _faiss().write_index(self.index, str(tmp))
        if stamp is None:
            atomic_write(path, write)
        else:
            save_stamped(path, write, stamp, self.count)

    @classmethod
    def load(cls, path: Path, stamp: dict) -> IVFPQ | None:
        """The saved structure if its stamp matches `stamp` (see `store.check_stamp`), else None."""
        if check_stamp(path, stamp)[0] != "ok":
            return None
        try:
            return cls(_faiss().read_index(str(path)))
        except RuntimeError:
            return None


def nlist_for(n: int) -> int:
    """Inverted lists for n objects: about 4 sqrt(n), a power of two, at most 4096 (and n / 8 for tiny n)."""
    return int(max(1, min(4096, 2 ** round(np.log2(4 * np.sqrt(max(n, 1)))), n // 8)))


def cached_ivfpq(
    path: Path,
    stamp: dict,
    codec: Codec,
    codes: np.ndarray,
    writable: bool,
    digest_of: Callable[[int], str] | None = None,
) -> IVFPQ:
    """Load the IVF-PQ at `path` if its stamp matches, else bring it up to date over `codes` (ids = row numbers)
    and, when `writable`, save it (best effort, as `ann.cached_graph`).

    With `digest_of` (the digest of the first n codes' rows, saved in the stamp), a structure
    built before rows were only appended gets the new codes added to its lists: its coarse
    centroids stay those it was trained with (`store.grown_from`). Otherwise it is built anew.
    Codes are decoded chunk by chunk, so neither holds the float vectors of the whole index.
    """
    n = len(codes)
    ivf = IVFPQ.load(path, stamp)
    if ivf is not None and ivf.count == n:
        return ivf
    grown = grown_from(path, stamp, digest_of) if digest_of is not None else None
    ivf = IVFPQ.load(path, grown[1]) if grown is not None else None
    if ivf is None or ivf.count != grown[0]:  # type: ignore[index]
        nlist = nlist_for(n)
        sample = codes[np.sort(np.random.default_rng(0).choice(n, min(n, 64 * nlist), replace=False))]
        ivf = IVFPQ.create(codec.centroids, codec.decode(sample), nlist)
    for lo in range(ivf.count, n, _ADD_CHUNK):
        ivf.add(codec.decode(codes[lo : lo + _ADD_CHUNK]), np.arange(lo, min(n, lo + _ADD_CHUNK)))
    if writable:
        with contextlib.suppress(OSError, DiskFullError):
            ivf.save(path, stamp if digest_of is None else {**stamp, "rows": digest_of(n)})
    return ivf
