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

SPARSE_KTH = 0.3  # median exact 5th-neighbour squared distance of a query keypoint in a 4-photo index (RESULTS)
MIN_SCANNED = 128  # a small index: each query keypoint probes enough words to meet about this many entries ...
MAX_PROBES = 16  # ... up to this many words
QUERY_BLOCK = 128  # query keypoints scanned at a time (the scan's memory grows with the collection)
# Segments larger than this in all (~5,000 photos) are released from memory after each block of a query's
# keypoints: one query's probes meet most lists of a large index, so keeping what they mapped would make a
# search process's resident memory grow with the collection. Below it they stay mapped: a bounded amount,
# and re-reading pages the kernel still caches is not free.
RESIDENT_SEGMENT_BYTES = 64 * 2**20
# Entries kept for the host stage's per-photo ratio test: those within this many times their query
# keypoint's k-th distance (the votes need only those under it). The rest of what a block scanned is freed.
KEEP_BEYOND_KTH = 3.0
PROBES = 3  # visual words each query descriptor looks in (bench/RESULTS.md "Local features that scale")


@dataclass(frozen=True)
class Neighbours:
    """The live stored keypoints a query's keypoints met in the lists they probed, up to KEEP_BEYOND_KTH
    times their k-th distance, flat and unsorted."""

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

    def __init__(
        self,
        vocabulary: Vocabulary,
        segments: dict[int, Segment],
        photo_of_id: np.ndarray,
        segment_of: np.ndarray,
        collection_count: int | None = None,
    ):
        self.vocabulary = vocabulary
        # entries in the whole collection, when the segments hold only a part of it (candidates fetched from Milvus)
        self.collection_count = collection_count
        self.segments = segments  # segment id -> mapped file
        self.photo_of_id = photo_of_id  # [max photo id + 1] photo number, -1: no such photo
        self.segment_of = segment_of  # [P] the segment holding each photo's features (0: none)
        # per segment: the photo number of each of its photos, -1 where the photo's features now live elsewhere
        self._numbers = {seg_id: self._photo_numbers(seg_id, seg) for seg_id, seg in segments.items()}
        self._release_blocks = sum(seg.nbytes for seg in segments.values()) > RESIDENT_SEGMENT_BYTES

    def _photo_numbers(self, seg_id: int, seg: Segment) -> np.ndarray:
        ids = seg.photos
        known = ids < len(self.photo_of_id)
        photo = np.full(len(ids), -1, np.int64)
        photo[known] = self.photo_of_id[ids[known]]
        live = photo >= 0
        live[live] = self.segment_of[photo[live]] == seg_id
        photo[~live] = -1
        return photo

    @property
    def count(self) -> int:
        """Stored keypoints (live or not) in all segments."""
        return sum(s.count for s in self.segments.values())

    def probes_for(self, probes: int) -> int:
        """`probes`, or more in a small index: with few entries per list, a keypoint's true neighbour is often
        in a list next to its own, and finding it there is cheap (MIN_SCANNED entries on average, at most
        MAX_PROBES words)."""
        count = self.count if self.collection_count is None else self.collection_count
        per_word = count / max(1, self.vocabulary.words) if self.vocabulary is not None else 0.0
        wanted = int(np.ceil(MIN_SCANNED / per_word)) if per_word > 0 else probes
        return int(min(max(probes, wanted), MAX_PROBES))

    def probe(self, descriptors: np.ndarray, k: int, probes: int = PROBES) -> Neighbours:
        """Every live entry in the `probes` nearest lists of each query descriptor (uint8 RootSIFT [Q, 128])."""
        x = as_float(descriptors)
        n = len(x)
        probes = self.probes_for(probes)
        words = self.vocabulary.nearest_words(x, probes)  # [Q, probes]
        pair_terms, tables = self.vocabulary.query_terms(x, words)
        kth = np.full(n, np.inf, np.float32)
        kept = []
        for lo in range(0, n, QUERY_BLOCK):  # a block of query keypoints at a time: memory stays bounded
            hi = min(n, lo + QUERY_BLOCK)
            hits = self._scan(words[lo:hi], pair_terms[lo:hi], tables[lo:hi])
            if not hits:
                continue
            q = np.concatenate([h[1] for h in hits])
            kth[lo:hi] = _kth_smallest(q, np.concatenate([h[3] for h in hits]), hi - lo, k)
            for seg, q, photo, dist, entry in hits:
                keep = dist <= KEEP_BEYOND_KTH * kth[lo:hi][q]
                xy = np.asarray(seg.geometry[entry[keep]]["xy"], np.float64)
                kept.append((q[keep] + lo, photo[keep], dist[keep], xy))
            if self._release_blocks:  # the block's lists are read: resident memory stays bounded
                for seg in self.segments.values():
                    seg.release()
        if not kept:
            return Neighbours(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros((0, 2)), kth)
        q, photo, dist, xy = (np.concatenate(p) for p in zip(*kept))
        return Neighbours(q, photo, dist, xy, kth)

    def _scan(self, words: np.ndarray, pair_terms: np.ndarray, tables: np.ndarray) -> list[tuple]:
        """Every live entry in the lists `words` [B, probes] name, scored: (segment, query in the block, photo,
        distance, entry) per segment."""
        probes, m = words.shape[1], self.vocabulary.code_size
        pair_terms, flat = pair_terms.reshape(-1), tables.reshape(-1)
        hits = []
        for seg_id, seg in self.segments.items():
            pair, entry = seg.ranges(words.reshape(-1))
            if len(entry) == 0:
                continue
            photo = self._numbers[seg_id][np.asarray(seg.local[entry], np.int64)]
            live = photo >= 0
            if not live.all():
                pair, entry, photo = pair[live], entry[live], photo[live]
            q = pair // probes
            codes = np.ascontiguousarray(np.asarray(seg.code[entry]).T)  # [M, E]: one contiguous row per sub-space
            dist = pair_terms[pair] + (NORM_LOW + NORM_STEP * np.asarray(seg.norm[entry], np.float32))
            base = (q * (m * 256)).astype(np.int32 if len(flat) < 2**31 else np.int64)
            for j in range(m):
                dist += flat[(base + j * 256) + codes[j]]
            hits.append((seg, q, photo, np.maximum(dist, 0.0).astype(np.float32), entry))
        return hits


def _kth_smallest(q: np.ndarray, dist: np.ndarray, n: int, k: int) -> np.ndarray:
    """[n] per query the k-th smallest distance; inf when it found nothing.

    When its lists hold fewer than k entries (a small index), its k-th neighbour lies
    outside them: no nearer than the largest found, nor than SPARSE_KTH, the k-th
    distance a query keypoint typically has in a small index. Without that floor
    a keypoint with one entry in its lists could never pass the ratio test against itself.
    """
    out = np.full(n, np.inf, np.float32)
    if len(q) == 0:
        return out
    counts = np.bincount(q, minlength=n)
    order = np.argsort(q.astype(np.int16 if n < 2**15 else np.int64), kind="stable")  # radix sort for int16
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    qs = q[order]
    table = np.full((n, max(int(counts.max()), k)), np.inf, np.float32)  # each query's distances, padded
    table[qs, np.arange(len(q)) - starts[qs]] = dist[order]
    kth = np.partition(table, k - 1, axis=1)[:, k - 1]
    has, few = counts > 0, (counts > 0) & (counts < k)
    out[has & ~few] = kth[has & ~few]
    out[few] = np.maximum(table[few].max(1, where=np.isfinite(table[few]), initial=0.0), SPARSE_KTH)
    return out
