"""`Searcher`: one open index plus the engine; runs the stages for one query photo at a time.

Stages, in order (each in its own module):

1. evidence (`evidence.py`): the query's objects and their Eq. 7 distances to
   every photo; its RootSIFT keypoints' votes (mirror image too when nothing
   gets `mirror_fallback_votes` as is);
2. host (`host.py`): the photo that explains most of the query once aligned;
3. region (`region.py`): the largest part of the query the host does not
   explain, searched on its own;
4. fusion (`fusion.py`): a pure ranking of that evidence.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..choices import Mode, parse
from ..engine import Engine
from ..graphs import open_graphs_for_reading
from ..keypoints import extract, mirrored
from ..store import Catalogue, Store
from .evidence import IndexedPhotos, QueryEvidence
from .fusion import DonorEvidence, Ranking, fused_ranking, object_ranking, vote_ranking
from .host import pick_host
from .params import DEFAULT_PARAMS, RankingParams
from .region import Region, changed_blob, region_evidence

_POOL = ThreadPoolExecutor(max_workers=1)  # keypoints on the other core while the networks run (both release the GIL)


@dataclass(frozen=True)
class Match:
    """One ranked database photo."""

    image: str
    score: float  # display score of the ranking, higher is better (comparable within one query only)
    distance: float  # Eq. 7 distance of the closest object pair (the region's, when it is closer); inf: not reached
    votes: int  # query keypoints voting for this photo
    query_box: list[float]  # the query object (or region) of the closest pair, query pixels
    db_box: list[float]  # the stored object of that pair, photo pixels

    def as_dict(self) -> dict:
        return {
            "image": self.image,
            "distance": round(float(self.distance), 6) if np.isfinite(self.distance) else None,  # None: not reached
            "score": round(float(self.score), 6),
            "votes": int(self.votes),
            "query_box": [round(float(v), 1) for v in self.query_box],
            "db_box": [round(float(v), 1) for v in self.db_box],
        }


class Searcher:
    """An open index plus the engine; search one query photo at a time."""

    def __init__(self, store: Store, engine: Engine, params: RankingParams = DEFAULT_PARAMS):
        self.store = store
        self.engine = engine
        self.params = params
        catalogue = store.load_all()
        objects, local = open_graphs_for_reading(store, catalogue)
        self.photos = IndexedPhotos(catalogue, objects, local)

    @property
    def catalogue(self) -> Catalogue:
        return self.photos.catalogue

    def gather(self, rgb: np.ndarray, top: int, mode: Mode) -> QueryEvidence:
        """Stage 1: the query's objects with their Eq. 7 distances and, unless `mode` is objects, its keypoints' votes."""
        pending = None
        if mode != Mode.OBJECTS:
            pending = _POOL.submit(extract, rgb, self.params.query_keypoints)
        boxes, emb = self.engine.objects(rgb)
        objects = self.photos.object_distances(emb, top)
        if pending is None:
            return QueryEvidence(boxes, emb, objects, (), ())
        feats = [pending.result()]
        votes = self.photos.votes(feats, self.params)
        if not votes or votes[0].counts.max() < self.params.mirror_fallback_votes:  # no host as is: the mirror image too
            feats.append(mirrored(feats[0], rgb.shape[1]))
            votes = self.photos.votes(feats, self.params)
        return QueryEvidence(boxes, emb, objects, tuple(feats), tuple(votes))

    def search_rgb(self, rgb: np.ndarray, top: int = 10, mode: Mode | str = Mode.FUSED) -> list[Match]:
        """Ranked matches for one decoded query photo."""
        mode = parse(Mode, mode, "mode")
        if mode != Mode.OBJECTS and not self.photos.has_local_features:  # an index without local features (--no-local)
            mode = Mode.OBJECTS
        ev = self.gather(rgb, top, mode)
        counts = ev.counts if ev.votes else np.zeros(self.photos.count, np.float64)
        region = None
        if mode == Mode.OBJECTS:
            ranking = object_ranking(ev.objects.distance)
        elif mode == Mode.LOCAL:
            ranking = vote_ranking(counts, ev.objects.distance)
        else:
            ranking, region = self.fuse(rgb, ev, counts, top)
        return self._matches(ev, ranking, counts, region, top)

    def fuse(self, rgb: np.ndarray, ev: QueryEvidence, counts: np.ndarray, top: int) -> tuple[Ranking, Region | None]:
        """Stages 2-4: the host, the region it leaves unexplained, and the fused ranking of donors."""
        if not ev.votes or counts.max() <= 0:
            return object_ranking(ev.objects.distance), None
        whole = self.photos.whole_image_distances(ev.embeddings[:1])
        host, explained = pick_host(self.photos, rgb, counts, whole, ev.features, ev.votes, self.params)
        residual = np.max([v.residual_counts(host) for v in ev.votes], axis=0).astype(np.float64)
        blob = changed_blob(explained.changed, self.params)
        region = None
        if blob is not None:
            region = region_evidence(self.photos, self.engine, _POOL, rgb, blob, host, top, self.params)
            residual += region.votes
        donors = DonorEvidence(host, residual, counts, ev.objects.distance, None if region is None else region.distance)
        return fused_ranking(donors, self.params), region

    def _matches(self, ev: QueryEvidence, ranking: Ranking, counts: np.ndarray, region: Region | None, top: int) -> list[Match]:
        """The first `top` photos of the ranking, each with its closest object pair (the region's when closer)."""
        objects, catalogue = ev.objects, self.photos.catalogue
        out = []
        for p in ranking.order[:top]:
            d, q_box = objects.distance[p], ev.boxes[objects.query_object[p]]
            db_box = catalogue.object_boxes[objects.db_row[p]] if np.isfinite(d) else np.zeros(4)
            if region is not None and region.distance[p] < d:
                d, q_box, db_box = region.distance[p], region.box, catalogue.object_boxes[region.row_of[p]]
            if not np.isfinite(d):
                q_box = np.zeros(4)
            out.append(
                Match(catalogue.paths[p], float(ranking.score[p]), float(d), int(counts[p]), q_box.tolist(), db_box.tolist())
            )
        return out
