"""Choosing the host: the indexed photo that forms the background of the query.

Candidates are the keypoint-vote leaders and the nearest whole images; each
is aligned with the query and scored by how much of it (and of its outer band)
it explains (`alignment.Explained.host_score`). `choose_host` is the pure rule.
"""

from __future__ import annotations

from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from ..alignment import RATIO, Explained, explained_by, ratio_matches
from ..imageio import ImageError, load_rgb
from ..keypoints import STORED_KEYPOINTS, LocalFeatures, extract, spread
from .evidence import IndexedPhotos, Votes
from .params import RankingParams

MIN_HOST_MATCHES = 4  # fewer ratio-test matches with a candidate: it explains nothing
OWN_KEYPOINTS_BELOW = 0.5  # no candidate explains this share by its matches in the probed lists: match their own keypoints
_ALIGN = ThreadPoolExecutor(max_workers=2)  # candidates aligned two at a time (SIFT and OpenCV release the GIL)


@dataclass(frozen=True)
class HostCandidates:
    """Photo numbers worth aligning, best first in each list."""

    by_votes: list[int]  # the vote leaders (at least one vote each)
    by_image: list[int]  # the nearest whole-image embeddings (reached by search)

    @property
    def all(self) -> list[int]:
        """Both lists, without repeats, vote leaders first."""
        return list(dict.fromkeys(self.by_votes + self.by_image))


def host_candidates(counts: np.ndarray, whole_distance: np.ndarray, params: RankingParams) -> HostCandidates:
    """The vote leaders and the nearest whole images (ties: lower photo number first)."""
    by_votes = [int(p) for p in np.argsort(-counts, kind="stable")[: params.host_candidates_votes] if counts[p] > 0]
    near = np.argsort(whole_distance, kind="stable")[: params.host_candidates_image]
    by_image = [int(p) for p in near if np.isfinite(whole_distance[p])]
    return HostCandidates(by_votes, by_image)


def choose_host(candidates: HostCandidates, host_score: Mapping[int, float], counts: np.ndarray, params: RankingParams) -> int:
    """The host among `candidates`, given each one's host score (share of the query it explains).

    The vote leader is the host unless another candidate explains clearly more
    (by `host_margin`); if none explains even `host_min_score` (a flat photo
    such as sand and sky aligns with nothing) the nearest whole image is the
    host: the vote leader is then often the donor, whose pasted object has the
    texture.
    """
    pool = candidates.all or [int(np.argmax(counts))]
    leader = candidates.by_votes[0] if candidates.by_votes else pool[0]
    best = max(pool, key=lambda p: (host_score[p], counts[p]))
    if host_score[best] < params.host_min_score and candidates.by_image:
        return candidates.by_image[0]
    return best if host_score[best] > host_score[leader] + params.host_margin else leader


def explain(
    photos: IndexedPhotos,
    rgb: np.ndarray,
    photo: int,
    features: tuple[LocalFeatures, ...],
    votes: tuple[Votes, ...],
    own_keypoints: bool = False,
) -> Explained:
    """How much of the query `photo` explains once aligned, and what it does not.

    The query's keypoints (of the orientation that voted more for this photo)
    are matched directly against the photo's own keypoints by the ratio test:
    far more matches than survive the global k-NN for a plain host such as sea
    or sky. The query's keypoints are matched against the photo's entries in the
    lists they probed, or, with `own_keypoints`, against the photo's full
    keypoints, extracted again from its file exactly as it was indexed (SIFT is
    deterministic; the index keeps only compact codes): many more for a plain
    photo whose keypoints fall in crowded lists. The stored photo gives the
    pixels; if it cannot be read, the spread of the matches stands in for the
    share explained.
    """
    h, w = rgb.shape[:2]
    flip = int(len(votes) > 1 and votes[1].counts[photo] > votes[0].counts[photo])
    f = features[flip]
    try:
        original = load_rgb(photos.catalogue.paths[photo])
    except ImageError:
        original = None
    q_idx, src = votes[flip].neighbours.matches(photo, RATIO)
    if original is not None and own_keypoints:
        stored = extract(original, STORED_KEYPOINTS)
        pairs = ratio_matches(f.descriptors.astype(np.float32), stored.descriptors.astype(np.float32))
        src = stored.keypoints[pairs[:, 1], :2].astype(np.float64)
        q_idx = pairs[:, 0]
    dst = f.keypoints[q_idx, :2].astype(np.float64)
    if flip:
        dst[:, 0] = w - dst[:, 0]
    if len(src) < MIN_HOST_MATCHES:
        return Explained.nothing()
    if original is None:
        return Explained(spread(dst, w, h), None, spread(dst, w, h))
    return explained_by(rgb, original, src, dst)


def pick_host(
    photos: IndexedPhotos,
    rgb: np.ndarray,
    counts: np.ndarray,
    whole_distance: np.ndarray,
    features: tuple[LocalFeatures, ...],
    votes: tuple[Votes, ...],
    params: RankingParams,
) -> tuple[int, Explained]:
    """The host of the query and what it explains (candidates aligned one by one, then `choose_host`).

    Candidates are aligned by their matches in the lists the query's keypoints probed; when none explains
    OWN_KEYPOINTS_BELOW of the query (a plain host: few of its keypoints survive the lists' ratio test),
    all are aligned again on their own keypoints."""
    candidates = host_candidates(counts, whole_distance, params)
    pool = candidates.all or [int(np.argmax(counts))]
    evidence = {p: explain(photos, rgb, p, features, votes) for p in pool}
    if max(e.host_score for e in evidence.values()) < OWN_KEYPOINTS_BELOW:  # no clear host from the lists: match harder
        evidence = dict(zip(pool, _ALIGN.map(lambda p: explain(photos, rgb, p, features, votes, own_keypoints=True), pool)))
    host = choose_host(candidates, {p: e.host_score for p, e in evidence.items()}, counts, params)
    return host, evidence[host]
