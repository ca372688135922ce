"""The evidence search gathers per indexed photo: Eq. 7 object distances and keypoint votes.

`IndexedPhotos` is the open index as search reads it (catalogue rows plus the
derived graphs); its methods turn a query's embeddings and keypoints into
per-photo arrays indexed by photo number. Nothing here ranks.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..alignment import SEARCH_FIT, fit_similarity
from ..ann import Graph
from ..ivf import IVFPQ
from ..keypoints import LocalFeatures
from ..local_index import LocalIndex, Neighbours
from ..store import Catalogue, Store
from .params import RankingParams

MIN_OBJECT_CANDIDATES = 64  # an object graph proposes at least this many stored objects per query object ...
CANDIDATES_PER_RESULT = 8  # ... or this many per result asked for


@dataclass(frozen=True)
class ObjectDistances:
    """Eq. 7 per photo: D(q, d) = min over object pairs of the squared L2 distance (inf: not reached)."""

    distance: np.ndarray  # [P] float32
    query_object: np.ndarray  # [P] the query object of the closest pair
    db_row: np.ndarray  # [P] the stored object row of the closest pair


@dataclass(frozen=True)
class Votes:
    """Accepted (query keypoint, stored keypoint) pairs of one orientation, and votes per photo.

    `neighbours` is everything the query's keypoints found in the lists they probed
    (the host stage matches a candidate's keypoints from it)."""

    q_idx: np.ndarray
    db_xy: np.ndarray  # [n, 2] the stored keypoint's position, photo pixels
    photos: np.ndarray
    counts: np.ndarray  # [P] distinct query keypoints voting for each photo
    neighbours: Neighbours | None = None

    @classmethod
    def from_neighbours(cls, found: Neighbours, n_photos: int, ratio: float) -> Votes:
        """Votes from the entries a query's keypoints found: an entry votes if its distance < `ratio` x its
        query keypoint's k-th nearest (a ratio test)."""
        ok = found.ratio_votes(ratio)
        ok = ok[np.lexsort((found.dist[ok], found.q[ok]))]  # nearest first per query keypoint
        q_idx, photos = found.q[ok], found.photo[ok]
        # one vote per query keypoint per photo: keep the first (nearest) pair
        _, first = np.unique(q_idx.astype(np.int64) * n_photos + photos, return_index=True)
        sel = ok[first]
        return cls(found.q[sel], found.xy[sel], found.photo[sel], np.bincount(found.photo[sel], minlength=n_photos), found)

    def residual_counts(self, host: int) -> np.ndarray:
        """[P] votes of the query keypoints that do not vote for `host` (what the host leaves unexplained)."""
        explained = np.unique(self.q_idx[self.photos == host])
        keep = ~np.isin(self.q_idx, explained)
        return np.bincount(self.photos[keep], minlength=len(self.counts))


@dataclass(frozen=True)
class QueryEvidence:
    """Everything search knows about one query before it ranks, one entry per indexed photo.

    `features` and `votes` hold one item per orientation searched (as is, then
    mirrored when searched); `votes` may be shorter when an orientation had no
    keypoints.
    """

    boxes: np.ndarray  # [K+1, 4] the query's objects (whole photo first), query pixels
    embeddings: np.ndarray  # [K+1, D] their whitened embeddings
    objects: ObjectDistances
    features: tuple[LocalFeatures, ...]
    votes: tuple[Votes, ...]

    @property
    def counts(self) -> np.ndarray:
        """[P] votes per photo, the better orientation's."""
        return np.max([v.counts for v in self.votes], axis=0).astype(np.float64)


class IndexedPhotos:
    """The open index as search reads it: the catalogue and its graphs, photos numbered 0..P-1."""

    def __init__(self, catalogue: Catalogue, objects: Graph | IVFPQ | None, local: LocalIndex, store: Store):
        self.catalogue = catalogue
        self.store = store
        self.objects = objects  # None: few enough objects to score every photo exactly
        self.local = local
        self.count = len(catalogue.paths)
        self.whole_rows = np.flatnonzero(catalogue.object_index == 0)
        self.photo_rows = np.searchsorted(catalogue.object_image, np.arange(self.count + 1))  # photo p: rows [p], [p+1]

    @property
    def has_local_features(self) -> bool:
        return self.local.count > 0

    def object_distances(self, query_emb: np.ndarray, top: int) -> ObjectDistances:
        """Eq. 7 for every photo reached.

        Without an object graph every photo is scored exactly. With one, it
        proposes each query object's nearest stored objects, and every photo
        owning one of them is scored exactly over all its objects.
        """
        dist = np.full(self.count, np.inf, np.float32)
        q_of = np.zeros(self.count, np.int64)
        row_of = np.zeros(self.count, np.int64)
        n = len(self.catalogue.codes)
        if n == 0:
            return ObjectDistances(dist, q_of, row_of)
        if self.objects is None:
            cand_rows = np.arange(n)
        else:
            k = min(n, max(MIN_OBJECT_CANDIDATES, CANDIDATES_PER_RESULT * top))
            rows, _ = self.objects.knn(query_emb, k, ef=2 * k)
            rows = rows[rows >= 0]
            photos = np.unique(self.catalogue.object_image[rows])
            cand_rows = np.concatenate([np.arange(self.photo_rows[p], self.photo_rows[p + 1]) for p in photos])
        d = self.catalogue.codec.distances(query_emb, self.catalogue.codes[cand_rows])  # [Q, R], exact w.r.t. the stored codes
        best_q = d.argmin(0)
        best_d = d[best_q, np.arange(len(cand_rows))]
        owners = self.catalogue.object_image[cand_rows]
        order = np.lexsort((best_d, owners))  # per owner, smallest first
        first = np.r_[True, owners[order][1:] != owners[order][:-1]]
        sel = order[first]
        dist[owners[sel]] = best_d[sel]
        q_of[owners[sel]] = best_q[sel]
        row_of[owners[sel]] = cand_rows[sel]
        return ObjectDistances(dist, q_of, row_of)

    def object_box(self, row: int) -> np.ndarray:
        """The box of stored object `row` (a row `object_distances` returned), photo pixels."""
        return self.catalogue.object_boxes[row]

    def sha256_of(self, photos: list[int]) -> dict[int, str]:
        """Photo number -> the sha256 its file had when indexed."""
        ids = [int(self.catalogue.image_ids[p]) for p in photos]
        found = self.store.sha256_of(ids)
        return {p: found[i] for p, i in zip(photos, ids) if i in found}

    def whole_image_distances(self, emb0: np.ndarray) -> np.ndarray:
        """[P] squared L2 between the query's whole-image embedding and every photo's (its object 0)."""
        rows = self.whole_rows
        d = np.full(self.count, np.inf)
        d[self.catalogue.object_image[rows]] = self.catalogue.codec.distances(emb0, self.catalogue.codes[rows])[0]
        return d

    def probe(self, features: LocalFeatures, k: int, probes: int) -> Neighbours:
        """The stored keypoints the query's descriptors meet in the lists they probe (`LocalIndex.probe`)."""
        return self.local.probe(features.descriptors, k, probes)

    def votes(self, feats: list[LocalFeatures] | tuple[LocalFeatures, ...], params: RankingParams) -> list[Votes]:
        """Votes of each orientation's keypoints (orientations without keypoints give none)."""
        out: list[Votes] = []
        if not self.has_local_features:
            return out
        for f in feats:
            if len(f) == 0:
                continue
            found = self.probe(f, params.vote_k, params.vote_probes)
            out.append(Votes.from_neighbours(found, self.count, params.vote_ratio))
        return out


MIN_FIT_PAIRS = 3  # a similarity fits any two pairs exactly: support needs a third at least


def consistent_fit(
    photos: IndexedPhotos, features: LocalFeatures, votes: Votes, photo: int, skip_queries: np.ndarray | None = None
) -> tuple[int, np.ndarray | None]:
    """How many of `photo`'s votes agree on one similarity transform (RANSAC inliers; 0 below MIN_FIT_PAIRS),
    and that transform (2x3, the stored photo's pixels -> the frame of `features`; None when there is none).

    Chance votes for an unrelated photo point every which way; the keypoints of
    a pasted object that came from `photo` map onto it by one transform. Votes
    of the query keypoints in `skip_queries` (those the host explains) are left out.
    """
    a, inliers = consistent_inliers(photos, features, votes, photo, skip_queries)
    return len(inliers), a


def consistent_inliers(
    photos: IndexedPhotos, features: LocalFeatures, votes: Votes, photo: int, skip_queries: np.ndarray | None = None
) -> tuple[np.ndarray | None, np.ndarray]:
    """`consistent_fit`'s transform (None when there is none) and its inliers' points in the frame of
    `features` ([N, 2] x, y; none below MIN_FIT_PAIRS votes)."""
    pick = votes.photos == photo
    if skip_queries is not None:
        pick &= ~np.isin(votes.q_idx, skip_queries)
    if pick.sum() < MIN_FIT_PAIRS:
        return None, np.zeros((0, 2))
    src = votes.db_xy[pick]
    dst = features.keypoints[votes.q_idx[pick], :2].astype(np.float64)
    a, inliers = fit_similarity(src, dst, SEARCH_FIT)
    return a, dst[inliers]


def consistent_votes(
    photos: IndexedPhotos, features: LocalFeatures, votes: Votes, photo: int, skip_queries: np.ndarray | None = None
) -> int:
    """The count of `consistent_fit`."""
    return consistent_fit(photos, features, votes, photo, skip_queries)[0]


LEADERS_FITTED = 3  # vote leaders whose votes `has_consistent_leader` fits


def has_consistent_leader(
    photos: IndexedPhotos, features: LocalFeatures, votes: Votes, need: int, exclude: int | None = None
) -> bool:
    """Whether one of the vote leaders (other than `exclude`) has at least `need` votes that agree on one
    similarity transform. Chance votes (symmetric textures, a small index whose lists hold few keypoints) can
    be many, but they agree on no transform."""
    counts = votes.counts.copy()
    if exclude is not None:
        counts[exclude] = 0
    for p in np.argsort(-counts, kind="stable")[:LEADERS_FITTED]:
        if counts[p] >= need and consistent_votes(photos, features, votes, int(p)) >= need:
            return True
    return False
