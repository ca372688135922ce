"""How object embeddings are stored: float32, float16 or product-quantised codes.

A codec turns whitened, L2-normalised embeddings [n, d] into fixed-size byte
codes [n, code_size] (what the index stores) and computes squared L2
distances from float queries to stored codes. For `pq` those are asymmetric
distances (the query stays exact, the stored vector is its code's
reconstruction), so ranking by them is exact with respect to what is stored.

The PQ codebook is learned once on training photos (`oesir weights pq`) and
shipped in `weights/`, like the whitening: codes stay comparable as an index
grows, and an index never has to be re-encoded because it got bigger.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .errors import OesirError

CODECS = ("float32", "float16", "pq")
DEFAULT_CODEC = "float16"  # a new index's: half float32's bytes, the same rankings (RESULTS "Scale: codecs ...")
PQ_SUBSPACES = 32  # 32 one-byte codes per 256-d embedding
PQ_CENTROIDS = 256


class CodecError(OesirError, ValueError):
    """Unknown codec, or codes that do not fit it."""


@dataclass(frozen=True)
class Codec:
    """Encode/decode embeddings; `centroids` [m, 256, d/m] only for pq."""

    name: str
    dim: int
    centroids: np.ndarray | None = None

    @property
    def code_size(self) -> int:
        if self.name == "float32":
            return 4 * self.dim
        if self.name == "float16":
            return 2 * self.dim
        return int(self.centroids.shape[0])  # type: ignore[union-attr]

    def encode(self, x: np.ndarray) -> np.ndarray:
        """Codes [n, code_size] uint8 for embeddings [n, dim]."""
        x = np.asarray(x, np.float32).reshape(-1, self.dim)
        if self.name == "float32":
            return np.ascontiguousarray(x, "<f4").view(np.uint8).reshape(len(x), self.code_size)
        if self.name == "float16":
            return np.ascontiguousarray(x.astype("<f2")).view(np.uint8).reshape(len(x), self.code_size)
        return pq_encode(x, self.centroids)  # type: ignore[arg-type]

    def decode(self, codes: np.ndarray) -> np.ndarray:
        """Float32 embeddings [n, dim] (for pq: each code's reconstruction)."""
        codes = self._check(codes)
        if self.name == "float32":
            return codes.view("<f4").reshape(len(codes), self.dim)
        if self.name == "float16":
            return codes.view("<f2").reshape(len(codes), self.dim).astype(np.float32)
        return pq_decode(codes, self.centroids)  # type: ignore[arg-type]

    def distances(self, queries: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """Squared L2 from each float query [Q, dim] to each stored code: [Q, n]."""
        queries = np.asarray(queries, np.float32).reshape(-1, self.dim)
        codes = self._check(codes)
        if self.name != "pq":
            return squared_l2(queries, self.decode(codes))
        return pq_distances(queries, codes, self.centroids)  # type: ignore[arg-type]

    def _check(self, codes: np.ndarray) -> np.ndarray:
        codes = np.ascontiguousarray(codes, np.uint8)
        if codes.ndim != 2 or codes.shape[1] != self.code_size:
            raise CodecError(f"{self.name} codes must be [n, {self.code_size}] bytes, got {codes.shape}")
        return codes


def squared_l2(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Squared L2 distance between the rows of a [Q, d] and b [R, d]: [Q, R]."""
    d = (a * a).sum(1)[:, None] + (b * b).sum(1)[None, :] - 2.0 * a @ b.T
    return np.maximum(d, 0.0)


def make_codec(name: str, dim: int, pq_file: Path | None = None) -> Codec:
    """The codec `name` for `dim`-d embeddings; pq needs its codebook file."""
    if name not in CODECS:
        raise CodecError(f"unknown codec {name!r}; one of {', '.join(CODECS)}")
    if name != "pq":
        return Codec(name, dim)
    if pq_file is None:
        raise CodecError("the pq codec needs a codebook file")
    centroids = load_codebook(pq_file)
    if centroids.shape[0] * centroids.shape[2] != dim:
        raise CodecError(f"codebook {pq_file.name} is for {centroids.shape[0] * centroids.shape[2]}-d embeddings, not {dim}-d")
    return Codec(name, dim, centroids)


# -- product quantisation ---------------------------------------------------
def _split(x: np.ndarray, m: int) -> np.ndarray:
    """[n, d] -> [m, n, d/m] sub-vectors."""
    n, d = x.shape
    return np.ascontiguousarray(x.reshape(n, m, d // m).transpose(1, 0, 2))


def pq_encode(x: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Nearest centroid per sub-space: codes [n, m] uint8."""
    m = centroids.shape[0]
    codes = np.empty((len(x), m), np.uint8)
    for j, sub in enumerate(_split(x, m)):
        codes[:, j] = squared_l2(sub, centroids[j]).argmin(1)
    return codes


def pq_decode(codes: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    m = centroids.shape[0]
    parts = [centroids[j][codes[:, j]] for j in range(m)]
    return np.concatenate(parts, axis=1).astype(np.float32) if parts else np.zeros((len(codes), 0), np.float32)


def pq_distances(queries: np.ndarray, codes: np.ndarray, centroids: np.ndarray) -> np.ndarray:
    """Asymmetric squared L2 [Q, n]: a lookup table per query and sub-space, summed over sub-spaces."""
    m = centroids.shape[0]
    table = np.stack([squared_l2(sub, centroids[j]) for j, sub in enumerate(_split(queries, m))], axis=1)  # [Q, m, k]
    out = np.zeros((len(queries), len(codes)), np.float32)
    by_space = np.ascontiguousarray(codes.T)  # [m, n]: one contiguous gather per sub-space
    for j in range(m):
        out += np.take(table[:, j], by_space[j], axis=1)
    return out


def train_codebook(
    x: np.ndarray, m: int = PQ_SUBSPACES, k: int = PQ_CENTROIDS, iterations: int = 25, seed: int = 0
) -> np.ndarray:
    """k-means (Lloyd, seeded, empty clusters re-seeded) in each of `m` sub-spaces: centroids [m, k, d/m]."""
    x = np.asarray(x, np.float32)
    if x.shape[1] % m:
        raise CodecError(f"{x.shape[1]}-d embeddings do not split into {m} sub-spaces")
    if len(x) < k:
        raise CodecError(f"need at least {k} training vectors, got {len(x)}")
    rng = np.random.default_rng(seed)
    out = np.empty((m, k, x.shape[1] // m), np.float32)
    for j, sub in enumerate(_split(x, m)):
        out[j] = kmeans(sub, k, iterations, rng)
    return out


def kmeans(x: np.ndarray, k: int, iterations: int, rng: np.random.Generator) -> np.ndarray:
    """Lloyd's k-means on the rows of `x`, seeded from the data, empty clusters re-seeded: centroids [k, d]."""
    cent = x[rng.choice(len(x), k, replace=False)].copy()
    for _ in range(iterations):
        assign = squared_l2(x, cent).argmin(1)
        counts = np.bincount(assign, minlength=k)
        sums = np.zeros_like(cent)
        np.add.at(sums, assign, x)
        empty = counts == 0
        cent[~empty] = sums[~empty] / counts[~empty, None]
        cent[empty] = x[rng.choice(len(x), int(empty.sum()), replace=False)]
    return cent


def save_codebook(path: Path, centroids: np.ndarray) -> None:
    np.savez(path, centroids=centroids.astype(np.float32))


def load_codebook(path: Path) -> np.ndarray:
    with np.load(path) as z:
        return z["centroids"].astype(np.float32)
