"""Searching the stored local features: a query's keypoints against the inverted lists of every segment.

Each query descriptor probes its `probes` nearest visual words; every live
entry of those lists in every segment is scored by its asymmetric PQ distance
(vocabulary.py). What comes back (`Neighbours`) is every scanned entry with
its query keypoint, photo, distance and stored position: the votes (search
stage 1) and a candidate host's keypoint matches (stage 2) are both read from
it, so the lists are read once per query orientation.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from .postings import Segment
from .vocabulary import NORM_LOW, NORM_STEP, Vocabulary, as_float

SPARSE_KTH = 0.17  # median 5th-neighbour squared distance of query keypoints in the standard database (RESULTS)
PROBES = 3  # visual words each query descriptor looks in (bench/RESULTS.md "Local features that scale")


@dataclass(frozen=True)
class Neighbours:
    """Every live stored keypoint in the lists a query's keypoints probed, flat and unsorted."""

    q: np.ndarray  # [E] query keypoint
    photo: np.ndarray  # [E] photo number
    dist: np.ndarray  # [E] float32 asymmetric squared L2 distance
    xy: np.ndarray  # [E, 2] float64 stored keypoint position, photo pixels
    kth: np.ndarray  # [Q] each query keypoint's k-th smallest distance (inf: none found)

    def ratio_votes(self, ratio: float) -> np.ndarray:
        """Indices of the entries nearer than `ratio` x their query keypoint's k-th neighbour (a ratio test)."""
        return np.flatnonzero(self.dist < ratio * self.kth[self.q])

    def matches(self, photo: int, ratio: float) -> tuple[np.ndarray, np.ndarray]:
        """A query keypoint's match in `photo`: its nearest entry of that photo, kept when clearly nearer
        (by `ratio`, on distances) than the photo's second nearest, or than the k-th overall when the photo
        has no second. Returns (query keypoint [M], stored position [M, 2])."""
        sel = np.flatnonzero(self.photo == photo)
        if len(sel) == 0:
            return np.zeros(0, np.int64), np.zeros((0, 2))
        order = sel[np.lexsort((self.dist[sel], self.q[sel]))]
        q = self.q[order]
        first = np.r_[True, q[1:] != q[:-1]]
        starts = np.flatnonzero(first)
        has_second = np.r_[starts[1:], len(order)] - starts > 1
        best = order[starts]
        second = np.where(has_second, self.dist[order[np.minimum(starts + 1, len(order) - 1)]], self.kth[q[starts]])
        good = self.dist[best] < (ratio * ratio) * second
        return self.q[best[good]], self.xy[best[good]]


class LocalIndex:
    """The live segments of an index, the vocabulary they were coded with, and which photo each entry is."""

    def __init__(self, vocabulary: Vocabulary, segments: dict[int, Segment], photo_of_id: np.ndarray, segment_of: np.ndarray):
        self.vocabulary = vocabulary
        self.segments = segments  # segment id -> mapped file
        self.photo_of_id = photo_of_id  # [max photo id + 1] photo number, -1: no such photo
        self.segment_of = segment_of  # [P] the segment holding each photo's features (0: none)

    @property
    def count(self) -> int:
        """Stored keypoints (live or not) in all segments."""
        return sum(s.count for s in self.segments.values())

    def probe(self, descriptors: np.ndarray, k: int, probes: int = PROBES) -> Neighbours:
        """Every live entry in the `probes` nearest lists of each query descriptor (uint8 RootSIFT [Q, 128])."""
        x = as_float(descriptors)
        n = len(x)
        words = self.vocabulary.nearest_words(x, probes)  # [Q, probes]
        pair_terms, tables = self.vocabulary.query_terms(x, words)
        pair_terms, flat = pair_terms.reshape(-1), tables.reshape(-1)
        m = self.vocabulary.code_size
        parts = []
        for seg_id, seg in self.segments.items():
            pair, entry = seg.ranges(words.reshape(-1))
            if len(entry) == 0:
                continue
            image = seg.images(entry)
            photo = np.where(image < len(self.photo_of_id), self.photo_of_id[np.minimum(image, len(self.photo_of_id) - 1)], -1)
            live = photo >= 0
            live[live] = self.segment_of[photo[live]] == seg_id
            pair, entry, photo = pair[live], entry[live], photo[live]
            q = pair // probes
            codes = np.asarray(seg.code[entry])
            dist = pair_terms[pair] + (NORM_LOW + NORM_STEP * np.asarray(seg.norm[entry], np.float32))
            base = q * (m * 256)
            for j in range(m):
                dist += flat[base + (j * 256 + codes[:, j].astype(np.int64))]
            xy = np.asarray(seg.geometry[entry]["xy"], np.float64)
            parts.append((q, photo, np.maximum(dist, 0.0).astype(np.float32), xy))
        if not parts:
            return Neighbours(
                np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros((0, 2)), np.full(n, np.inf)
            )
        q, photo, dist, xy = (np.concatenate(p) for p in zip(*parts))
        return Neighbours(q, photo, dist, xy, _kth_smallest(q, dist, n, k))


def _kth_smallest(q: np.ndarray, dist: np.ndarray, n: int, k: int) -> np.ndarray:
    """[n] per query the k-th smallest distance; inf when it found nothing.

    When its lists hold fewer than k entries (a small index), its k-th neighbour lies
    outside them: no nearer than the largest found, nor than SPARSE_KTH, the k-th
    distance a query keypoint typically has in a populated index. Without that floor
    a keypoint with one entry in its lists could never pass the ratio test against itself.
    """
    out = np.full(n, np.inf, np.float32)
    if len(q) == 0:
        return out
    order = np.argsort(q * 8.0 + np.minimum(dist, 7.0))  # by query, then distance (RootSIFT distances < 4)
    qs = q[order]
    starts = np.searchsorted(qs, np.arange(n))
    ends = np.searchsorted(qs, np.arange(n), side="right")
    has = ends > starts
    pick = np.minimum(starts + k - 1, ends - 1)
    out[has] = dist[order[pick[has]]]
    few = has & (ends - starts < k)
    out[few] = np.maximum(out[few], SPARSE_KTH)
    return out
