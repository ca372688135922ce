"""Ranking: pure functions from per-photo evidence to an order of photos.

The default ("fused") order is an explicit sort key, best first:

1. the host (chosen before, see `host.py`);
2. photos with at least `vote_gate` residual votes (keypoints of the region and
   of the query that the host does not explain), by residual votes;
3. within each group, and for every other photo, by reciprocal-rank fusion
   (RRF) of three lists: residual votes (plus `all_votes_weight` x all votes),
   Eq. 7 over the query's objects, Eq. 7 of the region's embeddings.
   A photo a list never reached (distance inf) earns nothing from that list.

Once roles are known, the photos labelled donor move up to follow the host
(`with_first`): a photo whose pixels confirm the paste outranks a lead that
only ranks well (search decides the roles, over a window of the ranking).

Ties keep the lower photo number first. Each ranking also returns a display
score that is non-increasing along the order (host > gated > the rest); its
value is only meaningful within one query.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .params import RankingParams

ALL_VOTES_WEIGHT = 1e-3  # all votes next to residual votes in the vote list of RRF: mostly a tie-break
DISTANCE_TIEBREAK_WEIGHT = 1e-3  # `local` mode display score: votes + this x (-Eq. 7 distance); distances are <= 4
UNREACHED_LOCAL_KEY = -10.0  # `local` mode: an unreached photo's Eq. 7 tie-break, below any real distance (<= 4)


@dataclass(frozen=True)
class Ranking:
    """Photo numbers best first (only photos with evidence), and a display score per photo [P]."""

    order: np.ndarray
    score: np.ndarray


@dataclass(frozen=True)
class DonorEvidence:
    """What fusion needs per photo [P] once the host is known."""

    host: int
    residual_votes: np.ndarray  # votes the host does not explain, plus the region's own votes
    votes: np.ndarray  # all votes of the query (better orientation)
    object_distance: np.ndarray  # Eq. 7 over the query's objects (inf: not reached)
    region_distance: np.ndarray | None = None  # Eq. 7 of the region (None: no region)


def reciprocal_ranks(values: np.ndarray, k: float) -> np.ndarray:
    """1 / (k + rank) of each value, smallest first (rank 0-based, ties by position); 0 for inf (not reached)."""
    order = np.argsort(values, kind="stable")
    ranks = np.empty(len(values), np.float64)
    ranks[order] = np.arange(len(values))
    return np.where(np.isfinite(values), 1.0 / (k + ranks), 0.0)


def fused_ranking(ev: DonorEvidence, params: RankingParams) -> Ranking:
    """Host, then photos past the vote gate by residual votes, then the rest by RRF (see the module docstring)."""
    n = len(ev.votes)
    residual = np.asarray(ev.residual_votes, np.float64).copy()
    residual[ev.host] = -1  # the host's own votes are not donor evidence
    rrf = reciprocal_ranks(-(residual + ALL_VOTES_WEIGHT * ev.votes), params.rrf_k)
    rrf += params.object_weight * reciprocal_ranks(ev.object_distance, params.rrf_k)
    if ev.region_distance is not None:
        rrf += params.region_weight * reciprocal_ranks(ev.region_distance, params.rrf_k)
    gated = residual >= params.vote_gate
    is_host = np.arange(n) == ev.host
    order = np.lexsort((np.arange(n), -rrf, -np.where(gated, residual, 0.0), ~gated, ~is_host))
    # each RRF list gives at most weight / rrf_k (0.3 in all by default), far below 1 + vote_gate
    score = rrf + np.where(gated, 1.0 + residual, 0.0)
    score[ev.host] = score.max() + 1.0
    return Ranking(order, score)


def with_first(ranking: Ranking, photos: Sequence[int], keep: int = 0) -> Ranking:
    """`ranking` with `photos` (in their order there) moved to follow its first `keep` photos (the host).

    Display scores stay non-increasing along the order: a moved photo scores at
    least as much as the best photo it now precedes.
    """
    order = ranking.order
    if keep < 0 or keep > len(order):
        raise ValueError(f"keep must be within 0..{len(order)}, not {keep}")
    wanted = np.unique(np.asarray(photos, dtype=np.int64))
    tail = order[keep:]
    is_moved = np.isin(tail, wanted)  # vectorised: the order holds every photo of the index
    moved, rest = tail[is_moved], tail[~is_moved]
    if len(moved) < len(wanted):
        raise ValueError("every photo moved must be in the ranking, after its first `keep`")
    score = ranking.score.copy()
    if len(rest) and len(moved):
        score[moved] = np.maximum(score[moved], score[rest].max())
    return Ranking(np.concatenate([order[:keep], moved, rest]), score)


def object_ranking(distance: np.ndarray) -> Ranking:
    """The paper's ranking: Eq. 7 distance, smallest first; unreached photos left out."""
    order = np.lexsort((np.arange(len(distance)), distance))
    order = order[np.isfinite(distance[order])]
    return Ranking(order, np.where(np.isfinite(distance), -distance, -np.inf))


def vote_ranking(votes: np.ndarray, distance: np.ndarray) -> Ranking:
    """Keypoint votes, most first; Eq. 7 breaks ties (unreached photos after reached ones)."""
    key = np.where(np.isfinite(distance), -distance, UNREACHED_LOCAL_KEY)
    order = np.lexsort((np.arange(len(votes)), -key, -np.asarray(votes, np.float64)))
    return Ranking(order, votes + DISTANCE_TIEBREAK_WEIGHT * key)
