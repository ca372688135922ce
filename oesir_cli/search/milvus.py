"""The evidence of `evidence.IndexedPhotos`, gathered from a Milvus index (milvus_store.py).

Photos are numbered 0..P-1 in id order, as search expects. Eq. 7 comes from
grouped searches (each query object's nearest object per photo, over-fetched
as the embedded index's graph is); keypoint votes from the same scoring code as
the embedded index (`local_index.LocalIndex`), run over the entries of the
candidate photos a sparse bag-of-words search returns.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..keypoints import LocalFeatures
from ..local_index import LocalIndex, Neighbours
from ..milvus_store import MAX_TOPK, MilvusStore
from ..postings import Entries, Segment
from ..vocabulary import as_float
from .evidence import CANDIDATES_PER_RESULT, MIN_OBJECT_CANDIDATES, IndexedPhotos, ObjectDistances

LOCAL_CANDIDATES = 512  # photos whose entries a query's keypoints are scored against (the sparse searches' top)
QUERY_GRIDS = (1, 2, 3)  # the query's bags of words: whole, 2 x 2 cells, 3 x 3 cells (`region_bags`)


@dataclass(frozen=True)
class PhotoList:
    """What search reads of the catalogue: ids and paths, numbered 0..P-1."""

    image_ids: np.ndarray
    paths: list[str]


class MilvusPhotos(IndexedPhotos):
    """`IndexedPhotos` whose evidence comes from Milvus searches (nothing is loaded whole but the photo list)."""

    def __init__(self, store: MilvusStore):  # no super().__init__: there is no local catalogue to load
        rows = store.photo_rows()
        self.store = store  # type: ignore[assignment]
        self.catalogue = PhotoList(rows.ids, rows.paths)  # type: ignore[assignment]
        self.count = len(rows.ids)
        self.objects = None
        self._sha256 = rows.sha256
        self._entries_total = int(rows.keypoints.sum())
        self._boxes: dict[int, tuple[float, float, float, float]] = {}

    @property
    def has_local_features(self) -> bool:
        return self._entries_total > 0

    def _numbers(self, ids: np.ndarray) -> np.ndarray:
        """Photo numbers of photo ids (-1: not a visible photo)."""
        ids = np.asarray(ids, np.int64)
        at = np.minimum(np.searchsorted(self.catalogue.image_ids, ids), max(self.count - 1, 0))
        ok = (self.count > 0) & (self.catalogue.image_ids[at] == ids) if self.count else np.zeros(len(ids), bool)
        return np.where(ok, at, -1)

    def object_distances(self, query_emb: np.ndarray, top: int) -> ObjectDistances:
        dist = np.full(self.count, np.inf, np.float32)
        q_of = np.zeros(self.count, np.int64)
        row_of = np.zeros(self.count, np.int64)
        if self.count == 0:
            return ObjectDistances(dist, q_of, row_of)
        hits = self.store.search_objects(query_emb, max(MIN_OBJECT_CANDIDATES, CANDIDATES_PER_RESULT * top))
        numbers = self._numbers(np.array([h.photo for h in hits], np.int64))
        for h, p in zip(hits, numbers):
            if p >= 0 and h.distance < dist[p]:
                dist[p], q_of[p], row_of[p] = h.distance, h.query, h.row
                self._boxes[h.row] = h.box
        return ObjectDistances(dist, q_of, row_of)

    def object_box(self, row: int) -> np.ndarray:
        return np.asarray(self._boxes[row], np.float32)

    def sha256_of(self, photos: list[int]) -> dict[int, str]:
        return {p: self._sha256[p] for p in photos}

    def whole_image_distances(self, emb0: np.ndarray) -> np.ndarray:
        d = np.full(self.count, np.inf)
        if self.count == 0:
            return d
        found = self.store.search_whole(np.asarray(emb0)[0], min(self.count, MAX_TOPK))
        numbers = self._numbers(np.array([i for i, _ in found], np.int64))
        for (_, dist), p in zip(found, numbers):
            if p >= 0:
                d[p] = dist
        return d

    def probe(self, features: LocalFeatures, k: int, probes: int) -> Neighbours:
        """`LocalIndex.probe` over the stored entries of the candidate photos (`region_bags`' sparse searches)."""
        vocabulary = self.store.vocabulary()
        empty = LocalIndex(vocabulary, {}, np.arange(self.count), np.ones(self.count, np.int64), self._entries_total)
        words = vocabulary.nearest_words(as_float(features.descriptors), empty.probes_for(probes))
        candidates = self.store.local_candidates(region_bags(features.keypoints, words), LOCAL_CANDIDATES)
        numbers = self._numbers(np.array(candidates, np.int64))
        ids = [c for c, p in zip(candidates, numbers) if p >= 0]
        found = self.store.local_entries(ids)
        wanted = np.zeros(vocabulary.words, bool)
        wanted[words] = True
        keep = np.flatnonzero(wanted[found.word])  # only the lists the query probes (the same words `probe` picks)
        image, word = found.image[keep], found.word[keep]
        entries = Entries(self._numbers(image), word, found.code[keep], found.norm[keep], found.geometry[keep])
        segment = Segment.in_memory(entries, vocabulary.words)
        index = LocalIndex(vocabulary, {1: segment}, np.arange(self.count), np.ones(self.count, np.int64), self._entries_total)
        return index.probe(features.descriptors, k, probes)


def region_bags(keypoints: np.ndarray, words: np.ndarray, grids: tuple[int, ...] = QUERY_GRIDS) -> list[dict[int, float]]:
    """Bags of probed words (word -> count) of the whole query and of each cell of each `grids` x `grids` split.

    A pasted object is a small share of the whole query's words, so its donor
    ranks low against the whole bag; in the cell that holds the paste it is
    most of the words.
    """
    keypoints, words = np.asarray(keypoints, np.float64), np.asarray(words)
    if keypoints.ndim != 2 or keypoints.shape[1] < 2 or words.ndim != 2 or len(words) != len(keypoints):
        raise ValueError(f"region_bags: keypoints {keypoints.shape} must be [N, >= 2] and words {words.shape} [N, probes]")
    xy = keypoints[:, :2]
    span = np.maximum(xy.max(0) - xy.min(0), 1e-6) if len(xy) else np.ones(2)
    rel = np.clip((xy - xy.min(0)) / span, 0.0, 1.0 - 1e-9) if len(xy) else xy
    bags = []
    for g in grids:
        cell = (rel[:, 0] * g).astype(np.int64) * g + (rel[:, 1] * g).astype(np.int64)
        for c in range(g * g):
            w, n = np.unique(words[cell == c], return_counts=True)
            if len(w):
                bags.append({int(a): float(b) for a, b in zip(w, n)})
    return bags
