"""`Searcher`: one open index plus the engine; runs the stages for one query photo at a time.

Stages, in order (each in its own module):

1. evidence (`evidence.py`): the query's objects and their Eq. 7 distances to
   every photo; its RootSIFT keypoints' votes (mirror image too when no photo
   gets `mirror_fallback_votes` consistent votes as is);
2. host (`host.py`): the photo that explains most of the query once aligned;
3. region (`region.py`): the largest part of the query the host does not
   explain, searched on its own;
4. fusion (`fusion.py`): a pure ranking of that evidence.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from typing import TYPE_CHECKING

import cv2
import numpy as np

from ..alignment import (
    RATIO,
    SEARCH_FIT,
    SHRUNK_ORIGINAL_SCALES,
    fit_similarity,
    near_points,
    on_mask,
    pixel_agreements,
    ratio_matches_at,
    share_inside,
)
from ..choices import Mode, Role, Verdict, parse
from ..engine import Engine
from ..graphs import open_graphs_for_reading
from ..imageio import ImageError, load_rgb
from ..keypoints import MAX_SIDE, STORED_KEYPOINTS, LocalFeatures, extract, mirrored
from ..pixels import shrink_to_side
from ..store import Catalogue, Store

if TYPE_CHECKING:
    from ..milvus_store import MilvusStore
from .evidence import MIN_FIT_PAIRS, IndexedPhotos, QueryEvidence, Votes, consistent_fit, has_consistent_leader
from .fusion import DonorEvidence, Ranking, fused_ranking, object_ranking, vote_ranking, with_first
from .host import pick_host
from .params import DEFAULT_PARAMS, RankingParams
from .region import Region, changed_blobs, merge_regions, moved_from_host, region_evidence
from .verdict import HostFinding, is_verified_host, roles_and_verdict

_POOL = ThreadPoolExecutor(max_workers=1)  # keypoints on the other core while the networks run (both release the GIL)
REMATCH_WIDTH = 2  # leading candidates matched again this many at a time, one per core (SIFT releases the GIL)
_REMATCH = ThreadPoolExecutor(max_workers=REMATCH_WIDTH)


@dataclass(frozen=True)
class Match:
    """One ranked database photo."""

    image: str
    score: float  # display score of the ranking, higher is better (comparable within one query only)
    distance: float  # Eq. 7 distance of the closest object pair (the region's, when it is closer); inf: not reached
    votes: int  # query keypoints voting for this photo
    query_box: list[float]  # the query object (or region) of the closest pair, query pixels
    db_box: list[float]  # the stored object of that pair, photo pixels
    role: Role = Role.CANDIDATE  # what the evidence supports (fused mode; other modes rank only)
    evidence: dict = field(default_factory=dict)  # the measurements behind the role (see README, "Search output")
    sha256: str | None = None  # of the photo as indexed

    def as_dict(self) -> dict:
        return {
            "image": self.image,
            "role": self.role.value,
            "distance": round(float(self.distance), 6) if np.isfinite(self.distance) else None,  # None: not reached
            "score": round(float(self.score), 6),
            "votes": int(self.votes),
            "query_box": [round(float(v), 1) for v in self.query_box],
            "db_box": [round(float(v), 1) for v in self.db_box],
            "evidence": self.evidence,
            "sha256": self.sha256,
        }


@dataclass(frozen=True)
class SearchResult:
    """One query's ranked matches and what they add up to."""

    matches: list[Match]
    verdict: Verdict | None  # None: not assessed (objects or local mode, which rank only)
    region_box: list[float] | None = None  # the part of the query the host does not explain, query pixels
    query: str | None = None  # the query photo's path, when searched from a file
    sha256: str | None = None  # of that file

    def as_dict(self) -> dict:
        return {
            "query": self.query,
            "sha256": self.sha256,
            "verdict": None if self.verdict is None else self.verdict.value,
            "region_box": self.region_box,
            "matches": [m.as_dict() for m in self.matches],
        }


@dataclass
class PixelChecks:
    """[P] each, per photo, what its own pixels said of the query's changed part once aligned (nan / False where
    not measured): the share of those pixels agreeing in colour, the share of their edges lying on its edges, and
    whether that confirms it as a donor (the thresholds depend on how the fit was found)."""

    colour: np.ndarray
    edges: np.ndarray
    confirmed: np.ndarray

    @classmethod
    def none(cls, count: int) -> PixelChecks:
        return cls(np.full(count, np.nan), np.full(count, np.nan), np.zeros(count, bool))

    def keep(self, p: int, colour: float, edges: float, confirmed: bool) -> None:
        """Record a measurement of photo `p` unless one already recorded is better (confirmed first, then colour)."""
        if (confirmed, colour) > (bool(self.confirmed[p]), np.nan_to_num(self.colour[p], nan=-1.0)):
            self.colour[p], self.edges[p], self.confirmed[p] = colour, edges, confirmed


@dataclass(frozen=True)
class Fused:
    """What the fused stages found: the ranking, the host, the region and the donor evidence."""

    ranking: Ranking
    host: HostFinding | None
    region: Region | None
    residual_votes: np.ndarray  # [P]
    support: np.ndarray  # [P] geometrically consistent residual votes (ranked photos only)
    pixels: PixelChecks | None = None  # what the photos' own pixels said of the changed part, where measured


class Searcher:
    """An open index plus the engine; search one query photo at a time."""

    def __init__(
        self,
        store: Store | MilvusStore,
        engine: Engine,
        params: RankingParams = DEFAULT_PARAMS,
        photos: IndexedPhotos | None = None,
    ):
        self.store = store
        self.engine = engine
        self.params = params
        if photos is None:  # the embedded index; `api.open_searcher` passes Milvus's own
            assert isinstance(store, Store)
            catalogue = store.load_all()
            objects = open_graphs_for_reading(store, catalogue)
            photos = IndexedPhotos(catalogue, objects, store.local_index(catalogue), store)
        self.photos = photos

    def close(self) -> None:
        """Release the index (a Milvus Lite file is open to one process at a time)."""
        self.store.close()

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
        if not votes or not has_consistent_leader(self.photos, feats[0], votes[0], self.params.mirror_fallback_votes):
            # no photo matches the query as it is: its mirror image too
            feats.append(mirrored(feats[0], rgb.shape[1]))
            votes = self.photos.votes(feats, self.params)
        return QueryEvidence(boxes, emb, objects, tuple(feats), tuple(votes))

    def search_rgb(self, rgb: np.ndarray, top: int = 10, mode: Mode | str = Mode.FUSED) -> list[Match]:
        """Ranked matches for one decoded query photo."""
        return self.search(rgb, top, mode).matches

    def search(self, rgb: np.ndarray, top: int = 10, mode: Mode | str = Mode.FUSED) -> SearchResult:
        """Ranked matches for one decoded query photo, with roles and a verdict (fused mode)."""
        mode = parse(Mode, mode, "mode")
        if top < 1:
            raise ValueError(f"top must be at least 1, not {top}")
        if mode != Mode.OBJECTS and not self.photos.has_local_features:  # an index without local features (--no-local)
            mode = Mode.OBJECTS
        window = top if mode != Mode.FUSED else max(top, self.params.donor_check_window)
        ev = self.gather(rgb, window, mode)
        counts = ev.counts if ev.votes else np.zeros(self.photos.count, np.float64)
        if mode == Mode.OBJECTS:
            return SearchResult(self._matches(ev, object_ranking(ev.objects.distance), counts, None, top), None)
        if mode == Mode.LOCAL:
            return SearchResult(self._matches(ev, vote_ranking(counts, ev.objects.distance), counts, None, top), None)
        fused = self.fuse(rgb, ev, counts, window)
        confirmed = None if fused.pixels is None else fused.pixels.confirmed
        order = fused.ranking.order[:window]
        roles, verdict = roles_and_verdict(order, fused.host, fused.support, self.params, confirmed)
        keep = int(fused.host is not None and len(order) > 0 and order[0] == fused.host.photo)  # the host stays first
        donors = [int(p) for p, r in list(zip(order, roles))[keep:] if r == Role.DONOR]
        if donors:
            fused = replace(fused, ranking=with_first(fused.ranking, donors, keep))
            order = fused.ranking.order[:window]
            roles, verdict = roles_and_verdict(order, fused.host, fused.support, self.params, confirmed)
        matches = self._matches(ev, fused.ranking, counts, fused.region, top, fused, roles)
        region_box = None if fused.region is None else [round(float(v), 1) for v in fused.region.box]
        return SearchResult(matches, verdict, region_box)

    def fuse(self, rgb: np.ndarray, ev: QueryEvidence, counts: np.ndarray, top: int) -> Fused:
        """Stages 2-4: the host, the region it leaves unexplained, and the fused ranking of donors, with the donor
        evidence of its first `top` photos."""
        whole = self.photos.whole_image_distances(ev.embeddings[:1])
        if not ev.votes or counts.max() <= 0:  # no keypoint evidence: Eq. 7 alone, no host
            none = np.zeros(self.photos.count, np.int64)
            return Fused(object_ranking(ev.objects.distance), None, None, none, none)
        host, explained = pick_host(self.photos, rgb, counts, whole, ev.features, ev.votes, self.params)
        residual = np.max([v.residual_counts(host) for v in ev.votes], axis=0).astype(np.float64)
        blobs = changed_blobs(explained.changed, self.params)
        region = None
        if blobs:
            regions = [region_evidence(self.photos, self.engine, _POOL, rgb, b, host, top, self.params) for b in blobs]
            region = merge_regions(regions)
            residual += region.votes
        donors = DonorEvidence(host, residual, counts, ev.objects.distance, None if region is None else region.distance)
        finding = HostFinding(
            photo=host,
            aligned=explained.changed is not None and explained.host_score >= self.params.host_min_score,
            explained_share=explained.share,
            frame_share=explained.frame,
            whole_distance=float(whole[host]),
            changed_region=bool(blobs),
            moved_region=region is not None and moved_from_host(self.photos, region, host, self.params, _whole_views(ev, blobs)),
        )
        ranking = fused_ranking(donors, self.params)
        residual_for_roles = residual.copy()
        residual_for_roles[host] = 0
        changed = np.any(blobs, axis=0) if blobs else None
        support, pixels = self._donor_support(
            rgb, ranking.order[:top], host, ev, region, changed, is_verified_host(finding, self.params), finding.moved_region
        )
        return Fused(ranking, finding, region, residual_for_roles, support, pixels)

    def _donor_support(
        self,
        rgb: np.ndarray,
        ranked: np.ndarray,
        host: int,
        ev: QueryEvidence,
        region: Region | None,
        changed: np.ndarray | None,
        host_verified: bool,
        moved: bool = False,
    ) -> tuple[np.ndarray, PixelChecks]:
        """[P] geometrically consistent votes per ranked photo (0 elsewhere): the region's own keypoints',
        and the query's keypoints the host does not explain; the larger of the two. For a host that is
        not verified, all the query's votes for it.

        And what the pixels say (`PixelChecks`) of a photo whose support is short of a donor's but enough for a
        transform (`donor_pixel_check_votes` or more): the changed pixels (of the view that gave that support)
        compared with its own, aligned by that transform (`alignment.agreement_over`, `edge_agreement_over`);
        and, when no photo is a donor so far, of the leading photos matched again (`_rematch_leaders`).
        """
        support = np.zeros(self.photos.count, np.int64)
        pixels = PixelChecks.none(self.photos.count)
        views = [] if region is None else list(region.views)
        frames: list = [] if region is None else list(region.frames)
        frames += [None] * (len(views) - len(frames))  # a region made without its pixels: no pixel test
        explained = [np.unique(v.q_idx[v.photos == host]) for v in ev.votes]
        if changed is not None:  # the whole query, as is and mirrored, with its changed pixels
            frames += [(rgb, changed), (rgb[:, ::-1], changed[:, ::-1])][: len(ev.votes)]
        else:
            frames += [None] * len(ev.votes)
        for p in ranked:
            if p == host:  # not a verified host: it may still be a donor (a composite of copies), by all its votes
                if not host_verified:
                    support[p] = max(consistent_fit(self.photos, f, v, p)[0] for f, v in zip(ev.features, ev.votes))
                continue
            fits = [consistent_fit(self.photos, f, v, p) for f, v in views]
            fits += [consistent_fit(self.photos, f, v, p, skip) for f, v, skip in zip(ev.features, ev.votes, explained)]
            if not fits:
                continue
            best = max(range(len(fits)), key=lambda i: fits[i][0])
            support[p], transform = fits[best]
            weak = max(MIN_FIT_PAIRS, self.params.donor_pixel_check_votes) <= support[p] < self.params.donor_min_consistent_votes
            if host_verified and weak and frames[best] is not None and transform is not None:
                colour, edges = self._pixel_agreement(int(p), frames[best], transform)
                pixels.keep(int(p), colour, edges, colour >= self.params.donor_min_pixel_agreement)
        if host_verified and region is not None and not moved:
            whole = []
            if changed is not None and ev.features:  # the query's own keypoints in its changed pixels, as is and mirrored
                inside = _keypoints_on(ev.features[0], changed)
                whole = [(inside, (rgb, changed)), (mirrored(inside, rgb.shape[1]), (rgb[:, ::-1], changed[:, ::-1]))]
            self._rematch_leaders(ranked, host, region, support, pixels, whole)
        return support, pixels

    def _rematch_leaders(
        self,
        ranked: np.ndarray,
        host: int,
        region: Region,
        support: np.ndarray,
        pixels: PixelChecks,
        whole: list[tuple[LocalFeatures, tuple[np.ndarray, np.ndarray]]],
    ) -> None:
        """When neither votes nor pixels have made any ranked photo a donor, the first `donor_rematch_candidates`
        ranked photos after the host are matched again on their own keypoints (extracted from the file as
        indexed; the lists' coded distances lose many of a small paste's matches) against the region's, as is
        and mirrored, and the `whole` query's, two at a time (one SIFT pass per photo, one per core) until one
        is confirmed; what their pixels say is kept in `pixels` (in place)."""
        if any(support[p] >= self.params.donor_min_consistent_votes or pixels.confirmed[p] for p in ranked if p != host):
            return  # a donor is found
        todo = [int(p) for p in ranked if p != host][: self.params.donor_rematch_candidates]
        views = _region_views(region) + whole
        for first in range(0, len(todo), REMATCH_WIDTH):
            batch = todo[first : first + REMATCH_WIDTH]
            for p, found in zip(batch, _REMATCH.map(lambda p: self._rematched_agreement(p, views), batch)):
                pixels.keep(p, *found)
            if pixels.confirmed[batch].any():
                return

    def _rematched_agreement(
        self, photo: int, views: list[tuple[LocalFeatures, tuple[np.ndarray, np.ndarray]]]
    ) -> tuple[float, float, bool]:
        """(colour, edges, confirmed) of the best fit of `photo` over `views`, aligned by its own keypoints (nan,
        nan, False: none); failing that, by those of the photo reduced (alignment.SHRUNK_ORIGINAL_SCALES: a paste
        shrunk several times). Matches of Lowe's ratio test, and of the looser `rematch_loose_ratio` (with a
        stricter edge test).

        A fit counts when most of its inliers (`min_inliers_in_change`) lie in the view's changed pixels; its
        agreement is measured on the changed pixels near them. Over the whole changed blob it would be diluted
        by what the blob holds besides this photo's part (the changed pixels of other pastes, of the edges);
        near the inliers of a chance fit, the pixels still disagree, and their edges do not lie on its edges
        (bench/RESULTS.md, "Session 17", "Session 18")."""
        try:
            original = load_rgb(self.photos.catalogue.paths[photo])
        except ImageError:
            return float("nan"), float("nan"), False
        P = self.params
        best = PixelChecks.none(1)
        tests = ((RATIO, P.rematch_min_edge_agreement), (P.rematch_loose_ratio, P.rematch_loose_min_edge_agreement))
        as_indexed = shrink_to_side(original, MAX_SIDE)[0]  # reduced from the size SIFT runs at, not the file's
        for scale in (1.0, *SHRUNK_ORIGINAL_SCALES):  # reduced only when the photo as it is confirms nothing
            if best.confirmed[0]:
                break
            view = original if scale == 1.0 else cv2.resize(as_indexed, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
            stored = extract(view, STORED_KEYPOINTS)
            ours = stored.descriptors.astype(np.float32)
            for features, (target, mask) in views:
                matched = ratio_matches_at(features.descriptors.astype(np.float32), ours, [r for r, _ in tests])
                for pairs, (_, min_edges) in zip(matched, tests):
                    if len(pairs) < MIN_FIT_PAIRS:
                        continue
                    src = stored.keypoints[pairs[:, 1], :2].astype(np.float64)
                    dst = features.keypoints[pairs[:, 0], :2].astype(np.float64)
                    a, inliers = fit_similarity(src, dst, SEARCH_FIT)
                    if a is None or inliers.sum() < max(MIN_FIT_PAIRS, P.donor_pixel_check_votes):
                        continue
                    if share_inside(dst[inliers], mask) < P.min_inliers_in_change:
                        continue
                    near = near_points(dst[inliers], mask.shape) & mask
                    colour, edges = pixel_agreements(target, near, view, a)
                    best.keep(0, colour, edges, colour >= P.rematch_min_pixel_agreement and edges >= min_edges)
        return float(best.colour[0]), float(best.edges[0]), bool(best.confirmed[0])

    def _pixel_agreement(self, photo: int, frame: tuple[np.ndarray, np.ndarray], transform: np.ndarray) -> tuple[float, float]:
        """`alignment.agreement_over` and `edge_agreement_over` of stored photo `photo` on a view's changed pixels
        (nan, nan: unreadable photo)."""
        try:
            original = load_rgb(self.photos.catalogue.paths[photo])
        except ImageError:
            return float("nan"), float("nan")
        target, mask = frame
        return pixel_agreements(target, mask, original, transform)

    def _matches(
        self,
        ev: QueryEvidence,
        ranking: Ranking,
        counts: np.ndarray,
        region: Region | None,
        top: int,
        fused: Fused | None = None,
        roles: list[Role] | None = None,
    ) -> list[Match]:
        """The first `top` photos of the ranking, each with its closest object pair (the region's when closer)."""
        objects, photos = ev.objects, self.photos
        order = ranking.order[:top]
        digests = photos.sha256_of([int(p) for p in order])
        out = []
        for i, p in enumerate(order):
            d, q_box = objects.distance[p], ev.boxes[objects.query_object[p]]
            db_box = np.asarray(photos.object_box(int(objects.db_row[p]))) if np.isfinite(d) else np.zeros(4)
            if region is not None and region.distance[p] < d:
                q_box = region.box if region.box_of is None else region.box_of[p]
                d, db_box = region.distance[p], np.asarray(photos.object_box(int(region.row_of[p])))
            if not np.isfinite(d):
                q_box = np.zeros(4)
            out.append(
                Match(
                    photos.catalogue.paths[p],
                    float(ranking.score[p]),
                    float(d),
                    int(counts[p]),
                    q_box.tolist(),
                    db_box.tolist(),
                    roles[i] if roles else Role.CANDIDATE,
                    _evidence(p, fused) if fused else {},
                    digests.get(int(p)),
                )
            )
        return out


def _keypoints_on(features: LocalFeatures, mask: np.ndarray) -> LocalFeatures:
    """The keypoints of `features` that lie on `mask` (bool [H, W] of their image): a rematch fit must lie mostly
    in the changed pixels, and matching only those keeps it cheap (a tenth of the query's, typically)."""
    keep = on_mask(features.keypoints, mask)
    return LocalFeatures(features.keypoints[keep], features.descriptors[keep])


def _whole_views(ev: QueryEvidence, blobs: list[np.ndarray]) -> list[tuple[LocalFeatures, Votes, np.ndarray]]:
    """The whole query's keypoints and votes, as is (and mirrored when it was searched so), each with the changed
    pixels in its frame."""
    if not blobs:
        return []
    changed = np.any(blobs, axis=0)
    frames = [changed, changed[:, ::-1]]
    return [(f, v, m) for f, v, m in zip(ev.features, ev.votes, frames)]


def _region_views(region: Region) -> list[tuple[LocalFeatures, tuple[np.ndarray, np.ndarray]]]:
    """The region's keypoints of every view it searched, and of each one's mirror image, with that view's pixels
    and changed blob (a view searched both ways comes twice: matching again is cheap next to SIFT)."""
    out = []
    for (features, _), (target, mask) in zip(region.views, region.frames):
        out.append((features, (target, mask)))
        out.append((mirrored(features, target.shape[1]), (target[:, ::-1], mask[:, ::-1])))
    return out


def _evidence(p: int, fused: Fused) -> dict:
    """The measurements behind photo `p`'s role, rounded for output."""
    out: dict = {}
    h = fused.host
    if h is not None and p == h.photo:
        out.update(
            aligned=h.aligned,
            explained_share=round(h.explained_share, 4),
            frame_share=round(h.frame_share, 4),
            whole_distance=round(h.whole_distance, 4),
            changed_region=h.changed_region,
            moved_region=h.moved_region,
        )
    else:
        out["residual_votes"] = int(fused.residual_votes[p])
        out["consistent_votes"] = int(fused.support[p])
        if fused.pixels is not None and np.isfinite(fused.pixels.colour[p]):
            out["pixel_agreement"] = round(float(fused.pixels.colour[p]), 4)
            out["edge_agreement"] = round(float(fused.pixels.edges[p]), 4)
    if fused.region is not None and np.isfinite(fused.region.distance[p]):
        out["region_distance"] = round(float(fused.region.distance[p]), 4)
    return out
