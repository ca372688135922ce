"""Roles and a verdict: what an examiner may read from a ranking, as pure rules on measured evidence.

The ranking always lists the nearest photos; these rules say which of them the
evidence actually supports. A host must be *verified*: aligned with the query
and explaining a good part of it, or (for a photo too flat to align) nearly the
same whole image. A donor must have keypoints of the part the host does not
explain voting for it *and agreeing on one transform onto it* (chance votes for
an unrelated photo point every which way). Everything else is a `candidate`: a lead, not a finding. The
thresholds live in `RankingParams` and were chosen on the dev sets and on photos
that are not in the collection (bench/RESULTS.md, "Roles and verdicts").
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..choices import Role, Verdict
from .params import RankingParams


@dataclass(frozen=True)
class HostFinding:
    """What search found out about the photo it ranked first in fused mode."""

    photo: int
    aligned: bool  # chosen because it explains the query once aligned (else: the nearest whole image)
    explained_share: float  # share of the query's pixels the aligned photo explains
    frame_share: float  # the same over the query's outer band
    whole_distance: float  # squared L2 between the two whole-image embeddings
    changed_region: bool  # a part of the query differs from the aligned photo (a pasted region)
    moved_region: bool = False  # that part matches the host elsewhere: a part of the host copied and moved

    @property
    def host_score(self) -> float:
        return 0.5 * (self.explained_share + self.frame_share)


def is_verified_host(h: HostFinding, params: RankingParams) -> bool:
    """The first-ranked photo really is the query's host."""
    if h.aligned and h.host_score >= params.host_verified_score:
        return True
    return h.whole_distance <= params.host_verified_whole_distance


def is_copy(h: HostFinding, params: RankingParams) -> bool:
    """The query is a stored photo (re-encoded, resized or cropped) with no local change."""
    return h.aligned and not h.changed_region and h.explained_share >= params.copy_min_share


def roles_and_verdict(
    order: np.ndarray,
    host: HostFinding | None,
    consistent_votes: np.ndarray,
    params: RankingParams,
    pixels_confirmed: np.ndarray | None = None,
) -> tuple[list[Role], Verdict]:
    """The role of each ranked photo and the query's verdict.

    `consistent_votes` [P] counts, per photo, the residual votes that agree on
    one transform onto it (for the first-ranked photo, all its votes: when it is
    not a verified host it can still be a donor, as in a composite of copies). Without a verified host a donor needs more of them:
    photos that are not in the collection at all draw a few consistent chance
    votes, and a splice almost always has its host in the collection. With a verified host, fewer consistent
    votes suffice when the photo's own pixels, aligned by their transform (or by its own keypoints matched
    again), confirm the changed part of the query (`pixels_confirmed` [P] bool: colours and edges agree).
    """
    host_ok = host is not None and is_verified_host(host, params)
    need = params.donor_min_consistent_votes if host_ok else params.donor_min_consistent_votes_without_host
    roles = []
    for p in order:
        if host is not None and p == host.photo and host_ok:
            roles.append(Role.HOST)
        elif consistent_votes[p] >= need or (host_ok and pixels_confirmed is not None and pixels_confirmed[p]):
            roles.append(Role.DONOR)
        else:
            roles.append(Role.CANDIDATE)
    if host_ok and is_copy(host, params) and Role.DONOR not in roles:
        return roles, Verdict.COPY
    if host_ok or Role.DONOR in roles:
        return roles, Verdict.SOURCES
    return roles, Verdict.NONE
