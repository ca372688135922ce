"""The local-feature codebook: a two-level visual vocabulary and a PQ code of each descriptor's residual.

A stored RootSIFT descriptor becomes its visual word (which inverted list
holds it) and 16 one-byte PQ codes of its residual to that word's centroid:
16 bytes instead of 128, and search scores a list by table look-ups
(asymmetric distances) without decoding it. The vocabulary has two levels
(COARSE x FINE centroids): a descriptor finds its word with COARSE + a few x
FINE dot products instead of one per word, which keeps indexing and query
assignment cheap, and a query probes its few nearest words.

The codebook is learned once on training photos that are never part of a
benchmark database (`oesir weights vocabulary`) and ships in the weights folder.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np

from .codec import CodecError, kmeans, squared_l2, train_codebook
from .keypoints import DESCRIPTOR_BYTES

COARSE = 128  # first-level centroids
FINE = 128  # second-level centroids per coarse cell: COARSE x FINE = 16,384 words
PQ_SUBSPACES = 16  # one-byte codes per descriptor residual (8 dimensions each)
PQ_CENTROIDS = 256
COARSE_PROBES = 3  # coarse cells a descriptor (stored or query) looks in for its nearest words
_CHUNK = 65_536  # rows decoded at a time
_ASSIGN_ROWS = 4_096  # rows assigned or coded at a time: their scores stay in the CPU caches
NORM_LOW, NORM_STEP = 0.5, 1.0 / 255.0  # stored squared norms: 0.5 .. 1.5 (RootSIFT has unit norm)
VOCABULARY_FILE = "rootsift_vocabulary_16k_pq16.npz"


def as_float(descriptors: np.ndarray) -> np.ndarray:
    """Stored uint8 RootSIFT descriptors (x 255) as float32 unit-scale rows: the space all distances are in."""
    return np.asarray(descriptors, np.float32) * (1.0 / 255.0)


@dataclass(frozen=True)
class Vocabulary:
    """Coarse centroids [C, 128], fine centroids [C, F, 128], residual PQ centroids [M, 256, 128 / M]."""

    coarse: np.ndarray
    fine: np.ndarray
    pq: np.ndarray

    def __post_init__(self) -> None:
        c, f, d = self.fine.shape
        if self.coarse.shape != (c, d) or d != DESCRIPTOR_BYTES or self.pq.shape[0] * self.pq.shape[2] != d:
            raise CodecError(f"inconsistent vocabulary shapes {self.coarse.shape}, {self.fine.shape}, {self.pq.shape}")

    @property
    def words(self) -> int:
        return self.fine.shape[0] * self.fine.shape[1]

    @property
    def code_size(self) -> int:
        return self.pq.shape[0]

    @property
    def centroids(self) -> np.ndarray:
        """[words, 128] every word's centroid (word = coarse x FINE + fine)."""
        return self.fine.reshape(-1, self.fine.shape[2])

    @classmethod
    def load(cls, path: Path) -> Vocabulary:
        try:
            with np.load(path) as z:
                return cls(z["coarse"].astype(np.float32), z["fine"].astype(np.float32), z["pq"].astype(np.float32))
        except (OSError, KeyError, ValueError) as exc:
            raise CodecError(f"cannot read the vocabulary {path}: {exc}") from None

    def save(self, path: Path) -> None:
        """Centroids as float16 (RootSIFT values lie in 0..1; half the bytes, the same words), the PQ codebook as float32."""
        np.savez(path, coarse=self.coarse.astype(np.float16), fine=self.fine.astype(np.float16), pq=self.pq)

    def nearest_words(self, x: np.ndarray, probes: int = 1, coarse_probes: int = COARSE_PROBES) -> np.ndarray:
        """[N, probes] the nearest words of float rows `x`, nearest first, looked for in their
        `coarse_probes` nearest coarse cells.

        Stored descriptors and queries must look as widely: a stored descriptor sits in the word a
        query next to it finds first (with one coarse cell, a fifth of them would not)."""
        x = np.ascontiguousarray(x, np.float32)
        out = np.empty((len(x), probes), np.int64)
        for lo in range(0, len(x), _ASSIGN_ROWS):
            out[lo : lo + _ASSIGN_ROWS] = self._nearest_words(x[lo : lo + _ASSIGN_ROWS], probes, coarse_probes)
        return out

    def _nearest_words(self, x: np.ndarray, probes: int, coarse_probes: int) -> np.ndarray:
        """`nearest_words` of a block of rows. Distances drop |x|^2 (the same for every centroid of a row) and
        are scored cell by cell over the (row, probed cell) pairs that fall in it, so each product is a plain
        [pairs, 128] x [128, FINE] one and nothing is padded or scattered."""
        n, a, n_fine = len(x), coarse_probes, self.fine.shape[1]
        cells = _smallest(x @ self._minus_2_coarse_t + self._coarse_norms, a)  # [n, a], nearest cell first
        pair_cell = cells.ravel()  # pair p = row p // a, its (p % a)-th cell
        order = np.argsort(pair_cell, kind="stable")
        bounds = np.searchsorted(pair_cell[order], np.arange(len(self.coarse) + 1))
        dist = np.empty((n * a, probes), np.float32)
        word = np.empty((n * a, probes), np.int64)
        for c in np.flatnonzero(np.diff(bounds)):
            pairs = order[bounds[c] : bounds[c + 1]]
            d = x[pairs // a] @ self._minus_2_fine_t[c]
            d += self._fine_norms[c]
            best = _smallest(d, probes)
            dist[pairs] = np.take_along_axis(d, best, 1)
            word[pairs] = c * n_fine + best
        pick = _smallest(dist.reshape(n, a * probes), probes)  # ties: the nearer cell's word first
        return np.take_along_axis(word.reshape(n, a * probes), pick, 1)

    @cached_property
    def _minus_2_coarse_t(self) -> np.ndarray:
        return np.ascontiguousarray(-2.0 * self.coarse.T)

    @cached_property
    def _coarse_norms(self) -> np.ndarray:
        return (self.coarse * self.coarse).sum(-1)

    @cached_property
    def _minus_2_fine_t(self) -> np.ndarray:
        return np.ascontiguousarray(-2.0 * self.fine.transpose(0, 2, 1))

    @cached_property
    def _fine_norms(self) -> np.ndarray:
        return (self.fine * self.fine).sum(-1)

    def encode(self, x: np.ndarray, words: np.ndarray) -> np.ndarray:
        """[N, M] uint8 PQ codes of the residuals of float rows `x` to their `words`' centroids.

        Scored a block of rows and one sub-space at a time into one reused buffer, without |r|^2 (the same
        for every centroid), so each [rows, 256] score matrix is written once and read once while it is in cache."""
        r = np.asarray(x, np.float32) - self.centroids[words]
        m, k, sub = self.pq.shape
        codes = np.empty((len(r), m), np.uint8)
        scores = np.empty((min(len(r), _ASSIGN_ROWS), k), np.float32)
        for lo in range(0, len(r), _ASSIGN_ROWS):
            block = r[lo : lo + _ASSIGN_ROWS]
            d = scores[: len(block)]
            for j in range(m):
                np.matmul(block[:, j * sub : (j + 1) * sub], self._minus_2_pq_t[j], out=d)
                d += self._pq_norms[j]
                codes[lo : lo + len(block), j] = d.argmin(1)
        return codes

    @cached_property
    def _minus_2_pq_t(self) -> np.ndarray:
        return np.ascontiguousarray(-2.0 * self.pq.transpose(0, 2, 1))  # [M, sub, 256]

    @cached_property
    def _pq_norms(self) -> np.ndarray:
        return (self.pq * self.pq).sum(-1)  # [M, 256]

    def decode(self, words: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """[N, 128] float approximations of the descriptors stored as (`words`, `codes`)."""
        m, _, sub = self.pq.shape
        r = np.concatenate([self.pq[j][codes[:, j]] for j in range(m)], axis=1) if len(codes) else np.zeros((0, m * sub))
        return self.centroids[words] + r.astype(np.float32)

    def norms(self, words: np.ndarray, codes: np.ndarray) -> np.ndarray:
        """[N] uint8 squared norms of the decoded descriptors, in NORM_STEP steps from NORM_LOW: the one
        term of an asymmetric distance that depends on the stored entry alone (see `query_terms`)."""
        out = np.empty(len(codes), np.uint8)
        for lo in range(0, len(codes), _CHUNK):
            y = self.decode(words[lo : lo + _CHUNK], codes[lo : lo + _CHUNK])
            out[lo : lo + _CHUNK] = np.clip(np.rint(((y * y).sum(1) - NORM_LOW) / NORM_STEP), 0, 255)
        return out

    def query_terms(self, x: np.ndarray, words: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """What a query needs to score stored entries without decoding them.

        For a stored y = c_w + r (word centroid plus decoded residual),
        |x - y|^2 = (|x|^2 - 2 x.c_w) - 2 sum_j x_j.r_j + |y|^2: the first term is one
        number per (row of `x`, word in `words[row]`) pair, the second a sum of
        per-row tables [N, M, 256] at the entry's codes, the third its stored norm.
        Returns (pair terms [N, probes], tables [N, M, 256]).
        """
        x = np.asarray(x, np.float32)
        pair = (x * x).sum(1)[:, None] - 2.0 * np.einsum("nd,npd->np", x, self.centroids[words])
        m, k, _ = self.pq.shape
        return pair, (x @ self._table_matrix).reshape(len(x), m, k)

    @cached_property
    def _table_matrix(self) -> np.ndarray:
        """[128, M x 256] block-diagonal: -2 x the PQ centroids of each sub-space, so that all of a row's tables
        are one matrix product (one BLAS call instead of M thin ones)."""
        m, k, sub = self.pq.shape
        out = np.zeros((m * sub, m * k), np.float32)
        for j in range(m):
            out[j * sub : (j + 1) * sub, j * k : (j + 1) * k] = -2.0 * self.pq[j].T
        return out


def _smallest(d: np.ndarray, n: int) -> np.ndarray:
    """[rows, n] column indices of each row's n smallest values, smallest first (n small: repeated argmin)."""
    d = d.copy()
    out = np.empty((len(d), n), np.int64)
    rows = np.arange(len(d))
    for i in range(n):
        out[:, i] = d.argmin(1)
        d[rows, out[:, i]] = np.inf
    return out


def train_vocabulary(
    descriptors: np.ndarray, coarse: int = COARSE, fine: int = FINE, m: int = PQ_SUBSPACES, seed: int = 0
) -> Vocabulary:
    """Learn the two-level vocabulary (hierarchical k-means) and the residual PQ codebook on float rows."""
    x = np.asarray(descriptors, np.float32)
    if len(x) < coarse * fine:
        raise CodecError(f"need at least {coarse * fine} training descriptors, got {len(x)}")
    rng = np.random.default_rng(seed)
    top = kmeans(x[rng.choice(len(x), min(len(x), 200_000), replace=False)], coarse, 20, rng)
    cell = np.concatenate([squared_l2(c, top).argmin(1) for c in np.array_split(x, max(1, len(x) // 50_000))])
    fines = np.empty((coarse, fine, x.shape[1]), np.float32)
    for c in range(coarse):
        members = x[cell == c]
        if len(members) < fine:  # a thin cell: pad with the nearest other descriptors
            near = np.argsort(squared_l2(top[c : c + 1], x[rng.choice(len(x), 20 * fine, replace=False)])[0])
            members = np.concatenate([members, x[near[: fine - len(members)]]])
        fines[c] = kmeans(members, fine, 15, rng)
    partial = Vocabulary(top, fines, np.zeros((m, PQ_CENTROIDS, x.shape[1] // m), np.float32))
    sample = x[rng.choice(len(x), min(len(x), 200_000), replace=False)]
    words = partial.nearest_words(sample)[:, 0]
    pq = train_codebook(sample - partial.centroids[words], m=m, k=PQ_CENTROIDS, iterations=20, seed=seed)
    return Vocabulary(top, fines, pq)
