"""The tuned constants of the ranking, in one frozen record.

Each field says what it means, its unit, and the section of bench/RESULTS.md
whose measurement chose its value; retune one there, not here.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class RankingParams:
    """Every tuned number of `search`; `RankingParams()` is what oesir ships."""

    # -- keypoint votes (RESULTS "Ablations measured with the exploration scripts") --
    query_keypoints: int = 1000
    """RootSIFT keypoints taken from the query photo (the stored photos keep as many)."""
    vote_k: int = 5
    """Stored neighbours looked up per query keypoint."""
    vote_probes: int = 3
    """Visual words (inverted lists) each query keypoint looks in (RESULTS "Local features that scale")."""
    vote_ratio: float = 0.7
    """A neighbour votes if its squared distance < this x the k-th neighbour's (a ratio test)."""
    mirror_fallback_votes: int = 20
    """The whole query's mirror image votes only if no photo gets this many votes as is that agree on one similarity
    transform (RESULTS "The region stage"; `evidence.has_consistent_leader`)."""

    # -- host choice (RESULTS "The region stage", frame host rule; "Region keypoints, a host fallback") --
    host_candidates_votes: int = 3
    """Host candidates: this many vote leaders ..."""
    host_candidates_image: int = 2
    """... and this many nearest whole-image embeddings."""
    host_margin: float = 0.05
    """A candidate replaces the vote leader as host only if its host score (share of the query explained) is this much higher."""
    host_min_score: float = 0.05
    """Below this host score nothing aligns (a flat photo): the nearest whole image is the host."""

    # -- the region (the part of the query the host does not explain; RESULTS "Region keypoints ...") --
    region_min_share: float = 0.002
    """Changed blobs smaller than this share of the query are noise."""
    region_max_share: float = 0.5
    """A changed blob over this share of the query means the host was not aligned: no region."""
    region_keypoint_side: int = 256
    """Pixels: the region (with its margin) is resized to this longer side for its own keypoints ..."""
    region_keypoints: int = 300
    """... and up to this many are taken, the strongest inside the changed pixels (500 found as many donors of
    small pastes but drew chance votes enough to pass `vote_gate` for unrelated photos: RESULTS "Session 19")."""
    region_blob_grow: float = 0.05
    """Region keypoints lie within the changed pixels grown by this share of the region's longer side."""
    max_regions: int = 3
    """A query assembled from several pastes: at most this many changed blobs are searched, largest first ..."""
    extra_region_min_share: float = 0.01
    """... each after the largest covering at least this share of the query."""
    region_clear_votes: int = 8
    """The region's mirror image is searched unless a photo other than the host gets this many votes from it as is
    that agree on one similarity transform (`evidence.has_consistent_leader`)."""

    # -- fusion of donor evidence (RESULTS "The region stage": RRF and the vote gate) --
    rrf_k: float = 10.0
    """Reciprocal-rank fusion: a photo at rank r (0-based) of one evidence list earns weight / (rrf_k + r)."""
    object_weight: float = 1.0
    """RRF weight of Eq. 7 over the query's objects (the residual-vote list has weight 1)."""
    region_weight: float = 1.0
    """RRF weight of Eq. 7 of the region's embeddings."""
    vote_gate: int = 4
    """Photos with at least this many residual votes (region + unexplained query keypoints) rank before all others."""

    # -- roles and verdicts (RESULTS "Roles and verdicts": dev sets vs photos not in the collection) --
    host_verified_score: float = 0.2
    """An aligned first photo is labelled host if its host score (mean of the shares of the query and of its
    outer band that it explains) reaches this."""
    host_verified_whole_distance: float = 0.5
    """... or, aligned or not, if its whole-image embedding is within this squared L2 distance of the query's."""
    copy_min_share: float = 0.9
    """Verdict `copy`: a verified host explains at least this share of the query and leaves no changed region."""
    donor_min_consistent_votes: int = 5
    """A photo is labelled donor when at least this many of its residual votes (the region's own keypoints, or
    the query keypoints the host does not explain) agree on one similarity transform (RANSAC inliers)."""
    donor_min_consistent_votes_without_host: int = 7
    """The same when no host is verified: photos not in the collection drew up to 6 consistent chance votes."""
    donor_pixel_check_votes: int = 3
    """With a verified host, a photo with fewer consistent votes than a donor needs but at least this many is
    aligned by their transform and its pixels compared with the changed pixels (`alignment.agreement_over`) ..."""
    donor_min_pixel_agreement: float = 0.4
    """... and labelled donor when its pixels confirm at least this share of them (in colour: over the whole
    changed blob, edges are not required; a 3-vote transform is often a pixel or two off, which edges do not
    forgive: a true composite donor had colour 0.42, edges 0.08; RESULTS "Session 18")."""
    donor_check_window: int = 20
    """Roles are decided for at least this many leading photos, however few are asked for, and those labelled donor
    move up to follow the host: a donor confirmed at rank 12 is shown in a top 10, and a top 10 is the head of a
    top 100 (RESULTS "Session 20")."""
    donor_rematch_candidates: int = 6
    """With a verified host and a region that is not moved from the host, up to this many of the first ranked
    photos that are not yet donors are matched again on their own keypoints (from the file), against the region's
    and the whole query's, two at a time until one is confirmed: labelled donor when their pixels near the fit's
    inliers, within the changed pixels, agree on `rematch_min_pixel_agreement` of them and their edges on
    `rematch_min_edge_agreement`."""
    rematch_min_pixel_agreement: float = 0.3
    """Colour agreement a rematch fit needs near its inliers (a local measure: undiluted by the rest of the change) ..."""
    rematch_min_edge_agreement: float = 0.3
    """... and the share of the edge pixels there that lie on its own edges (`alignment.edge_agreement_over`: a
    shared flat colour agrees by chance, edges do not; RESULTS "Session 18")."""
    rematch_loose_ratio: float = 0.9
    """A paste re-shared small keeps few distinctive keypoints: the rematch also fits the matches of this looser
    ratio test ..."""
    rematch_loose_min_edge_agreement: float = 0.6
    """... whose fits, more often chance, need this much edge agreement (true donors' 0.63-1.0; chance fits'
    0.32-0.52, and 0.68 on a straw texture photographed twice: RESULTS "Session 18")."""
    min_inliers_in_change: float = 0.5
    """A rematch's fit, or the host's fit to the region (`moved_min_votes`), counts only when at least this share
    of its inliers lie in the changed pixels (RESULTS "Session 17")."""
    moved_min_votes: int = 5
    """The region is a part of the host moved (a copy-move; no donor is looked for again) when this many of the
    region's own keypoints agree with the host on one transform (`region.moved_from_host`)."""


DEFAULT_PARAMS = RankingParams()
