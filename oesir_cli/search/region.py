"""The region: the part of the query its host does not explain, queried on its own.

A pasted object covers a few cells of the query's feature maps and a few of
its keypoints; cropped, enlarged and searched on its own (embedding as is and
mirrored, and keypoints of its own) it finds its donor far more often.
"""

from __future__ import annotations

from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import cv2
import numpy as np

from ..alignment import on_mask, share_inside
from ..engine import REGION_MARGIN, Engine, crop_region
from ..keypoints import LocalFeatures, extract, mirrored
from ..pixels import clean_mask
from .evidence import IndexedPhotos, Votes, consistent_inliers, has_consistent_leader
from .params import RankingParams

MIN_REGION_SIDE = 8  # pixels: a resized region is never smaller than this


@dataclass(frozen=True)
class Region:
    """The region and the evidence it gives per photo."""

    box: np.ndarray  # [x1, y1, x2, y2], query pixels
    distance: np.ndarray  # [P] Eq. 7 distance of the region's embeddings to each photo's objects (inf: not reached)
    row_of: np.ndarray  # [P] the stored object row nearest to the region
    votes: np.ndarray  # [P] votes of the region's own keypoints
    views: tuple[tuple[LocalFeatures, Votes], ...] = ()  # the region's keypoints (as is, mirrored) and their votes
    box_of: np.ndarray | None = None  # [P, 4] when merged from several regions: the region closest to each photo
    frames: tuple[tuple[np.ndarray, np.ndarray], ...] = ()  # per view: the pixels its keypoints are in, and the blob there


def changed_blob(changed: np.ndarray | None, params: RankingParams) -> np.ndarray | None:
    """The largest cleaned-up changed blob (bool [H, W]), or None (nothing, or over `region_max_share` of the photo).

    Over that share the alignment explains little: there is no reliable region.
    """
    if changed is None:
        return None
    m = clean_mask(changed, params.region_min_share)
    n, labels, stats, _ = cv2.connectedComponentsWithStats((m > 0).astype(np.uint8), connectivity=8)
    if n <= 1:
        return None
    i = 1 + int(np.argmax(stats[1:, cv2.CC_STAT_AREA]))
    if stats[i, cv2.CC_STAT_AREA] > params.region_max_share * m.size:
        return None
    return labels == i


def changed_blobs(changed: np.ndarray | None, params: RankingParams) -> list[np.ndarray]:
    """The changed blobs worth searching on their own (bool [H, W] each), largest first.

    The largest as `changed_blob` gives it; then, for a photo assembled from
    several pastes, up to `max_regions` - 1 more that each cover at least
    `extra_region_min_share` of the query (smaller ones are seams and noise).
    """
    first = changed_blob(changed, params)
    if first is None:
        return []
    m = clean_mask(changed, params.region_min_share)
    n, labels, stats, _ = cv2.connectedComponentsWithStats((m > 0).astype(np.uint8), connectivity=8)
    areas = stats[1:, cv2.CC_STAT_AREA]
    order = 1 + np.argsort(-areas, kind="stable")
    extra = [labels == i for i in order[1:] if stats[i, cv2.CC_STAT_AREA] >= params.extra_region_min_share * m.size]
    return [first] + extra[: params.max_regions - 1]


def merge_regions(regions: list[Region]) -> Region:
    """One region's worth of evidence from several: per photo the closest region's distance (and its box
    and object row), votes summed (they come from different keypoints), every view kept. One region: itself."""
    if len(regions) == 1:
        return regions[0]
    dist = np.stack([r.distance for r in regions])
    which = dist.argmin(0)
    cols = np.arange(dist.shape[1])
    return Region(
        box=regions[0].box,
        distance=dist[which, cols],
        row_of=np.stack([r.row_of for r in regions])[which, cols],
        votes=np.sum([r.votes for r in regions], axis=0),
        views=tuple(v for r in regions for v in r.views),
        box_of=np.stack([r.box for r in regions])[which],
        frames=tuple(f for r in regions for f in r.frames),
    )


def blob_box(blob: np.ndarray) -> np.ndarray:
    """Box [x1, y1, x2, y2] (exclusive right/bottom) of a non-empty bool mask."""
    ys, xs = np.nonzero(blob)
    return np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], np.float32)


def changed_region(changed: np.ndarray | None, params: RankingParams) -> np.ndarray | None:
    """Box [x1, y1, x2, y2] of the largest cleaned-up changed blob, or None (see `changed_blob`)."""
    blob = changed_blob(changed, params)
    return None if blob is None else blob_box(blob)


def grown_blob(blob: np.ndarray, box: np.ndarray, grow_share: float) -> np.ndarray:
    """The changed pixels grown by `grow_share` of the region's longer side (bool [H, W])."""
    grow = max(1, round(grow_share * float(max(box[2] - box[0], box[3] - box[1]))))
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * grow + 1, 2 * grow + 1))
    return cv2.dilate(blob.astype(np.uint8), kernel) > 0


def region_frame(
    rgb: np.ndarray, box: np.ndarray, blob: np.ndarray | None, params: RankingParams
) -> tuple[np.ndarray, np.ndarray | None]:
    """The region as its keypoints see it: the box with its margin, resized to `region_keypoint_side`, and
    `blob` (bool [H, W] of the query, or None) in that frame."""
    crop = crop_region(rgb, box, REGION_MARGIN)
    scale = params.region_keypoint_side / max(crop.shape[:2])
    size = (max(MIN_REGION_SIDE, round(crop.shape[1] * scale)), max(MIN_REGION_SIDE, round(crop.shape[0] * scale)))
    crop = cv2.resize(crop, size, interpolation=cv2.INTER_CUBIC if scale > 1 else cv2.INTER_AREA)
    if blob is None:
        return crop, None
    return crop, _blob_in_frame(blob, box, size)


def _blob_in_frame(blob: np.ndarray, box: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    cropped = crop_region(blob.astype(np.uint8)[:, :, None], box, REGION_MARGIN)[:, :, 0]
    return cv2.resize(cropped, size, interpolation=cv2.INTER_NEAREST) > 0


def region_keypoints(
    rgb: np.ndarray, box: np.ndarray, blob: np.ndarray | None, params: RankingParams
) -> tuple[LocalFeatures, int]:
    """RootSIFT of the region resized to `region_keypoint_side` (in the resized crop's coordinates), and its width.

    Enlarged to about the size a pasted object has in its source photo, a
    small paste yields keypoints at the scales the source's stored keypoints
    were taken at, instead of the few the whole query gives it; enlarged much
    further, it only interpolates detail the source's keypoints never saw.
    With `blob` (bool [H, W], the changed pixels) keypoints are taken only
    there (grown by `region_blob_grow`): the host around a pasted object would
    otherwise take most of the keypoint budget and vote for the host, which is
    already known.
    """
    crop, _ = region_frame(rgb, box, None, params)
    where = None
    if blob is not None:
        where = _blob_in_frame(grown_blob(blob, box, params.region_blob_grow), box, (crop.shape[1], crop.shape[0]))
    return extract(crop, params.region_keypoints, where), crop.shape[1]


def region_evidence(
    photos: IndexedPhotos,
    engine: Engine,
    pool: ThreadPoolExecutor,
    rgb: np.ndarray,
    blob: np.ndarray,
    host: int,
    top: int,
    params: RankingParams,
) -> Region:
    """Eq. 7 distances of the region's embeddings (as is, mirrored) and its own keypoints' votes.

    The region's mirror image votes unless a photo other than the host gets
    `region_clear_votes` consistent votes from the region as it is (a mirrored
    paste finds nothing so, or only chance votes that agree on no transform). Keypoints are taken on `pool`'s
    thread while the network runs.
    """
    box = blob_box(blob)
    pending = pool.submit(region_keypoints, rgb, box, blob, params)
    emb = engine.region_embeddings(rgb, box)
    objects = photos.object_distances(emb, top)
    features, width = pending.result()
    crop, where = region_frame(rgb, box, blob, params)
    counts = np.zeros(photos.count)
    views, frames = [], []
    for view, frame in ((features, (crop, where)), (mirrored(features, width), (crop[:, ::-1], where[:, ::-1]))):
        for votes in photos.votes([view], params):
            counts = np.maximum(counts, votes.counts)
            views.append((view, votes))
            frames.append(frame)
            if has_consistent_leader(photos, view, votes, params.region_clear_votes, exclude=host):
                break
        else:
            continue
        break
    return Region(box, objects.distance, objects.db_row, counts.astype(np.float64), tuple(views), frames=tuple(frames))


def moved_from_host(
    photos: IndexedPhotos,
    region: Region,
    host: int,
    params: RankingParams,
    whole: Sequence[tuple[LocalFeatures, Votes, np.ndarray]] = (),
) -> bool:
    """Whether the region is a part of the host itself, moved (a copy-move): the region's own keypoints from
    inside the changed pixels agree with the host on one transform (`moved_min_votes` inliers, at least
    `min_inliers_in_change` of them in the changed blob); or the `whole` query's keypoints that lie in the
    changed pixels do (features, their votes, and the changed pixels in their frame: as is, mirrored).

    A pasted region from another photo does not match the host there (only the host around it, at the
    margin of the blob); its donor, not the host, is what the region's keypoints find. The whole query's
    keypoints in the changed pixels gave none of the 418 CASIA splices a single consistent vote for the host,
    and found 25 more of the 453 copy-moves than the region's alone (290; bench/RESULTS.md, "Session 18").
    """
    for (features, votes), (_, blob) in zip(region.views, region.frames):
        if blob is None:
            continue
        _, points = consistent_inliers(photos, features, votes, host)
        if len(points) >= params.moved_min_votes and share_inside(points, blob) >= params.min_inliers_in_change:
            return True
    for features, votes, changed in whole:
        outside = np.flatnonzero(~on_mask(features.keypoints, changed))
        _, points = consistent_inliers(photos, features, votes, host, skip_queries=outside)
        if len(points) >= params.moved_min_votes:
            return True
    return False
