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
QUERY_BLOCK = 128  # query keypoints scanned at a time, at most ...
# ... and at most this many stored entries (a block is cut short where its keypoints' lists are long): the
# scan's working arrays take ~100 bytes per entry, and in a large collection a few frequent visual words hold
# long lists, so blocks of a fixed number of keypoints would make a search's memory grow with the collection.
SCAN_ENTRIES = 1_000_000
# Segments larger than this in all (~5,000 photos) hand back the pages a block of query keypoints read from
# them as soon as it is copied out: one query's probes meet most lists of a large index, so keeping what they
# mapped would make a search process's resident memory grow with the collection. Below it they stay mapped: a bounded amount,
# and re-reading pages the kernel still caches is not free.
RESIDENT_SEGMENT_BYTES = 64 * 2**20
# Entries kept for the host stage's per-photo ratio test: those within this many times their query
# keypoint's k-th distance (the votes need only those under it). The rest of what a block scanned is freed.
KEEP_BEYOND_KTH = 3.0
# ... and at most this many per query keypoint, its nearest: in a large collection most of a long list lies within
# KEEP_BEYOND_KTH of the k-th distance, and keeping it all would make a search's memory grow with the collection.
# (On the standard database no query keypoint of casia-sir's first queries keeps more than ~940.)
KEEP_PER_KEYPOINT = 1024
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
        words = vocabulary.words if vocabulary is not None else 0
        self._list_lengths = np.zeros(words, np.int64)  # per word: entries in its lists over all segments
        for seg in segments.values():
            if seg.words == words:
                self._list_lengths += np.diff(np.asarray(seg.offsets, np.int64))

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
        for lo, hi in scan_blocks(self._list_lengths[words].sum(1), QUERY_BLOCK, SCAN_ENTRIES):
            hits = self._scan(words[lo:hi], pair_terms[lo:hi], tables[lo:hi])
            if not hits:
                continue
            q, dist = np.concatenate([h[0] for h in hits]), np.concatenate([h[2] for h in hits])
            kth[lo:hi] = _kth_smallest(q, dist, hi - lo, k)
            limit = np.minimum(KEEP_BEYOND_KTH * kth[lo:hi], _cap_distance(q, dist, hi - lo, KEEP_PER_KEYPOINT))
            for seg_q, photo, seg_dist, xy in hits:
                keep = seg_dist <= limit[seg_q]
                kept.append((seg_q[keep] + lo, photo[keep], seg_dist[keep], xy[keep].astype(np.float64)))
        if not kept:
            return Neighbours(np.zeros(0, np.int64), np.zeros(0, np.int64), np.zeros(0, np.float32), np.zeros((0, 2)), kth)
        q, photo, dist, xy = (np.concatenate(p) for p in zip(*kept))
        return Neighbours(q, photo, dist, xy, kth)

    def _scan(self, words: np.ndarray, pair_terms: np.ndarray, tables: np.ndarray) -> list[tuple]:
        """Every live entry in the lists `words` [B, probes] name, scored: (query in the block, photo, distance,
        stored position [E, 2]) per segment.

        What an entry needs is copied out of the segment at once; in a large index the segment's pages are
        then handed back (`Segment.release`): the kernel maps ~64 KB around each page a list is read from, so
        keeping them would hold hundreds of MB per block of query keypoints.
        """
        probes, m = words.shape[1], self.vocabulary.code_size
        pair_terms, flat = pair_terms.reshape(-1), tables.reshape(-1)
        hits = []
        for seg_id, seg in self.segments.items():
            pair, entry = seg.ranges(words.reshape(-1))
            if len(entry) == 0:
                continue
            release = seg.release if self._release_blocks else _keep_mapped
            photo = self._numbers[seg_id][np.asarray(seg.local[entry], np.int64)]
            release()  # after each field: the pages mapped at once are one field's, not all four's
            live = photo >= 0
            if not live.all():
                pair, entry, photo = pair[live], entry[live], photo[live]
            q = pair // probes
            codes = np.ascontiguousarray(np.asarray(seg.code[entry]).T)  # [M, E]: one contiguous row per sub-space
            release()
            norm = np.asarray(seg.norm[entry], np.float32)
            release()
            xy = np.asarray(seg.geometry[entry]["xy"])
            release()
            dist = pair_terms[pair] + (NORM_LOW + NORM_STEP * norm)
            base = (q * (m * 256)).astype(np.int32 if len(flat) < 2**31 else np.int64)
            for j in range(m):
                dist += flat[(base + j * 256) + codes[j]]
            hits.append((q, photo, np.maximum(dist, 0.0).astype(np.float32), xy))
        return hits


def _keep_mapped() -> None:
    """`Segment.release` for an index small enough to stay mapped."""


def scan_blocks(entries: np.ndarray, rows: int, budget: int) -> list[tuple[int, int]]:
    """Consecutive (lo, hi) blocks of query keypoints: at most `rows` keypoints and, unless one keypoint alone
    exceeds it, at most `budget` entries (`entries[i]`: what keypoint i scans) per block."""
    entries = np.asarray(entries, np.int64)
    if rows < 1 or budget < 1 or entries.ndim != 1 or (entries < 0).any():
        raise ValueError(f"scan_blocks: rows {rows} and budget {budget} must be >= 1, entries a 1-d count")
    total = np.r_[0, np.cumsum(entries)]
    blocks, lo, n = [], 0, len(entries)
    while lo < n:
        fits = int(np.searchsorted(total, total[lo] + budget, side="right")) - 1  # last hi within the budget
        hi = min(max(fits, lo + 1), lo + rows, n)
        blocks.append((lo, hi))
        lo = hi
    return blocks


def _cap_distance(q: np.ndarray, dist: np.ndarray, n: int, cap: int) -> np.ndarray:
    """[n] per query keypoint the `cap`-th smallest distance it found; inf where it found `cap` or fewer."""
    out = np.full(n, np.inf, np.float32)
    counts = np.bincount(q, minlength=n)
    over = np.flatnonzero(counts > cap)
    if len(over) == 0:
        return out
    order = np.argsort(q.astype(np.int16 if n < 2**15 else np.int64), kind="stable")
    starts = np.r_[0, np.cumsum(counts)[:-1]]
    for i in over:  # few keypoints, and only in a large collection
        out[i] = np.partition(dist[order[starts[i] : starts[i] + counts[i]]], cap - 1)[cap - 1]
    return out


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
