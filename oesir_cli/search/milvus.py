"""The evidence of `evidence.IndexedPhotos`, gathered from a Milvus index (milvus_store.py).

Photos are numbered 0..P-1 in id order, as search expects. Eq. 7 comes from
grouped searches (each query object's nearest object per photo, over-fetched
as the embedded index's graph is); keypoint votes from the same scoring code as
the embedded index (`local_index.LocalIndex`), run over the lists the query
probes, read from Milvus.
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
        self._serials = rows.serials
        self._serial_order = np.argsort(rows.serials)
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
        """`LocalIndex.probe` over the lists the query's keypoints probe, read from Milvus: the same entries the
        embedded index would scan, so the same neighbours."""
        vocabulary = self.store.vocabulary()
        ones = np.ones(self.count, np.int64)
        sizing = LocalIndex(vocabulary, {}, np.arange(self.count), ones, self._entries_total)
        words = vocabulary.nearest_words(as_float(features.descriptors), sizing.probes_for(probes))
        found = self.store.list_entries(words)
        photo = self._by_serial(found["serial"])
        live = photo >= 0  # entries of a rewritten, removed or half-written photo are dead
        records = found[live]
        word = records["word"].astype(np.int64)
        entries = Entries(photo[live], word, records["code"], records["norm"], records["geometry"])
        segment = Segment.in_memory(entries, vocabulary.words)
        index = LocalIndex(vocabulary, {1: segment}, np.arange(self.count), ones, self._entries_total)
        return index.probe(features.descriptors, k, probes)

    def _by_serial(self, serials: np.ndarray) -> np.ndarray:
        """Photo numbers of the writings `serials` (-1: not the current writing of a visible photo)."""
        order = self._serial_order
        if len(order) == 0:
            return np.full(len(serials), -1, np.int64)
        at = np.minimum(np.searchsorted(self._serials[order], serials), len(order) - 1)
        return np.where(self._serials[order][at] == serials, order[at], -1)
