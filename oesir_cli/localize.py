"""`oesir localize`: where was the query changed, given an original it was made from.

1. Align: RootSIFT matches (ratio test) between query and original, and
   between query and the mirrored original; RANSAC homography on the better
   one, or a similarity fit whose original's pixels agree near its inliers.
   Too few inliers: a similarity fit from as few as three inliers (the
   query's keypoints also taken on it enlarged, as a small paste needs) that
   the original's pixels confirm around those inliers once aligned, the
   original's keypoints also taken on it reduced (a paste shrunk several times).
   Else the transform of the best-matching object pair (the paper's Eq. 8), when
   one is given. Otherwise AlignmentError.
2. Relation: warp the original into the query frame and measure how much of
   the query it explains. Most of it: the original is the **host**, and the
   manipulated region is where the two disagree. A part: it is the **donor**,
   and the manipulated region is the part of the query that matches it, in every
   place its content was pasted (further placements, each fitted and confirmed on
   its own), grown by the paste's mixed edge.
3. Score map: colour difference at full resolution (blurred against JPEG and
   resampling noise) combined with the teacher feature difference (Eq. 9);
   outside the warped original's footprint nothing is called manipulated.
   Morphology and small-component removal clean the binary mask.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

import cv2
import numpy as np

from .alignment import (
    LOCALIZE_FIT,
    SHRUNK_ORIGINAL_SCALES,
    fit_homography,
    fit_similarity,
    is_host_relation,
    near_points,
    pixel_agreements,
    ratio_matches,
)
from .choices import Relation, parse
from .errors import OesirError
from .geometry import box_similarity, footprint, is_plausible, mirror_x, rescaled
from .keypoints import LocalFeatures, extract
from .pixels import clean_mask, colour_difference, feature_difference, shrink_to_side
from .teacher import Teacher

MIN_INLIERS = 12  # a homography needs this many consistent matches ...
MIN_SIMILARITY_INLIERS = 6  # ... a similarity transform this many, when its pixels agree on at least
MIN_SIMILARITY_AGREEMENT = 0.3  # this share near its inliers (true donors 0.39-0.96, chance fits 0.15-0.16: RESULTS)
MIN_EDGE_AGREEMENT = 0.3  # every similarity fit: its edges agree on this share there (true 0.40-1.0, chance 0.05-0.23)
MIN_MATCHES = 4  # fewer ratio-test matches than this: nothing to fit
MIN_CONFIRMED_INLIERS = 3  # a similarity fit with fewer inliers (3-5) is accepted only when pixels confirm it ...
MIN_PIXEL_AGREEMENT = 0.4  # ... by agreeing with the query on at least this share of the pixels near its inliers
CONFIRM_UPSCALE = 2.0  # the query's keypoints are also taken on it enlarged this much (at most to WORK_SIDE)
# ... and when that aligns nothing, the original's keypoints on it reduced (alignment.SHRUNK_ORIGINAL_SCALES)
MAX_FURTHER_PLACEMENTS = 4  # a donor's content found pasted in this many more places at most
ALIGN_KEYPOINTS = 4000
CONTRAST_THRESHOLDS = (0.04, 0.01)  # SIFT's default first; the low one only when nothing aligned
WORK_SIDE = 1024  # alignment and scoring run at most at this longer side
DEFAULT_THRESHOLD = 0.5
PIXEL_NOISE, PIXEL_RANGE = 4.0, 16.0  # Lab distance: below NOISE is recompression, NOISE+RANGE is a sure change
FEATURE_RANGE = 0.5  # Eq. 9 difference at which the features call a pixel surely changed
FEATURE_FLOOR = 0.25  # share of the colour evidence kept where the features see no change
CHANGE_BLUR = 2.0
HEAT_BLUR = 1.5
FOOTPRINT_ERODE = 5  # pixels: the warped original's border is interpolated, not evidence
AGREE_BELOW = 0.5  # change score under which a pixel agrees with the original
SUPPORT_GROW = 0.03  # donor: the inliers' hull grown by this share of the longer side is where the paste is
UNSUPPORTED_WEIGHT = 0.3  # donor: agreement outside that support counts this much ...
DETACHED_WEIGHT = 0.6  # ... and agreement not connected to it this much more
# donor: the mask is grown by this many pixels (work resolution). A paste's border pixels are mixed with the
# host's (cut, resampling, JPEG) and agree with neither photo, and the blurred change map reaches "surely
# changed" (PIXEL_NOISE + a few Lab units) well before a boundary's full contrast, so disagreement spreads
# ~2 pixels into the agreeing side and rounds it off further at corners. Measured on the dev sets' donor
# masks (bench/RESULTS.md): grown 2-4 pixels all fit the truth better than as found; 3 best on both.
DONOR_EDGE = 3
# host: the same spread pushes its change mask out of the paste, by less (rounding at corners works against it):
# measured on the three dev sets' host masks, shrunk 1 pixel all three fit better (RESULTS), 2 not all.
HOST_EDGE = 1


class AlignmentError(OesirError):
    """The two photos could not be aligned (unrelated, or too different)."""


@dataclass
class Alignment:
    """Homography mapping original pixels to query pixels, with its evidence.

    `localize` returns it in the pixel frames of the two arrays it was given.
    """

    homography: np.ndarray
    inliers: int
    matches: int
    mirrored: bool
    method: str  # "keypoints" | "keypoints-similarity" | "keypoints-pixels" | "objects"
    query_points: np.ndarray  # inlier positions in the query
    pixel_agreement: float | None = None  # similarity fits: share of the pixels near the inliers that agree ...
    contrast: float | None = None  # SIFT contrast threshold of the keypoints that aligned (None: objects)
    original_scale: float = 1.0  # the original's keypoints that aligned were taken on it reduced to this scale
    edge_agreement: float | None = None  # ... and share of the edge pixels there whose edges agree

    def as_dict(self) -> dict:
        return {
            "homography": [[round(float(v), 6) for v in row] for row in self.homography],
            "inliers": self.inliers,
            "matches": self.matches,
            "mirrored": self.mirrored,
            "alignment": self.method,
            "pixel_agreement": None if self.pixel_agreement is None else round(self.pixel_agreement, 4),
            "edge_agreement": None if self.edge_agreement is None else round(self.edge_agreement, 4),
        }


@dataclass
class LocalizeResult:
    """Mask (uint8, 255 = manipulated) and heatmap (uint8 0..255) in the query frame, plus evidence."""

    mask: np.ndarray
    heatmap: np.ndarray
    alignment: Alignment
    relation: str  # "host" | "donor"
    explained_share: float
    changed_share: float
    score: float
    further_placements: list[Alignment] = field(default_factory=list)  # donor: its content pasted elsewhere too
    placement: np.ndarray | None = None  # uint8, query frame: k inside the mask where placement k explains it
    # (1 = `alignment`, 2.. = `further_placements`), 0 outside the mask

    @property
    def verified(self) -> bool:
        """Whether keypoints confirm the alignment; an object-pair alignment (Eq. 8) is a guess.

        Measured on CASIA, object-pair distances of true donors overlap those of
        unrelated photos, so a mask from that alignment must not be read as a finding.
        A fit from a few inliers counts when the original's pixels confirm it.
        """
        a = self.alignment
        return a.method == "keypoints-pixels" or (a.method != "objects" and a.inliers >= MIN_SIMILARITY_INLIERS)

    def as_dict(self) -> dict:
        return {
            "relation": self.relation,
            "verified": self.verified,
            **self.alignment.as_dict(),
            "further_placements": [p.as_dict() for p in self.further_placements],
            "explained_share": round(self.explained_share, 4),
            "changed_share": round(self.changed_share, 4),
            "score": round(self.score, 4),
        }


def align(
    query: np.ndarray,
    original: np.ndarray,
    object_pair: tuple[np.ndarray, np.ndarray] | None = None,
    features: PairFeatures | None = None,
) -> Alignment:
    """Transform original -> query from keypoints (mirror tried too), else from an object pair.

    A homography needs MIN_INLIERS consistent matches; a small pasted object
    often yields fewer, so a similarity transform (4 degrees of freedom, far
    harder to fit by chance) is accepted from MIN_SIMILARITY_INLIERS when the
    original's pixels near them agree (MIN_SIMILARITY_AGREEMENT). Flat
    photos (sea, sky) have few keypoints at SIFT's usual contrast threshold, so
    when nothing aligns the keypoints are taken again at a low threshold.
    """
    features = features or PairFeatures(query, original)
    for contrast in CONTRAST_THRESHOLDS:
        found = _align_keypoints(features, contrast)
        if found is not None:
            return found
    found = _align_confirmed_by_pixels(query, original, features)
    if found is None:
        found = _align_confirmed_by_pixels(query, original, features, SHRUNK_ORIGINAL_SCALES)
    if found is not None:
        return found
    if object_pair is not None:
        q_box, o_box = object_pair
        return Alignment(box_similarity(o_box, q_box), 0, 0, False, "objects", np.zeros((0, 2), np.float32))
    raise AlignmentError(
        "could not align the photos: no transform that their keypoints agree on and their pixels confirm; are they related?"
    )


class PairFeatures:
    """The keypoints of one (query, original) pair's views, each extracted once per localize call.

    Alignment and the search for further placements ask for the same views (the
    query as is and enlarged, the original as is and mirrored, at two SIFT
    contrasts); SIFT is most of their cost.
    """

    def __init__(self, query: np.ndarray, original: np.ndarray) -> None:
        self.query_image, self.original_image = query, original
        self._cache: dict[tuple, LocalFeatures] = {}
        self._reduced: dict[float, np.ndarray] = {1.0: original}

    @property
    def enlargement(self) -> float:
        """How much the query is enlarged for its second view (1: no second view)."""
        return max(1.0, min(CONFIRM_UPSCALE, WORK_SIDE / max(self.query_image.shape[:2])))

    def original(self, contrast: float, mirrored: bool, scale: float = 1.0) -> LocalFeatures:
        key = ("original", mirrored, contrast, scale)
        if key not in self._cache:
            self._cache[key] = _alignment_features(self.oriented(mirrored, scale), contrast)
        return self._cache[key]

    def oriented(self, mirrored: bool, scale: float = 1.0) -> np.ndarray:
        """The original as is, or mirrored left to right; reduced to `scale` (area averaging, as a forger's resize)."""
        if scale not in self._reduced:
            self._reduced[scale] = cv2.resize(self.original_image, None, fx=scale, fy=scale, interpolation=cv2.INTER_AREA)
        img = self._reduced[scale]
        return np.ascontiguousarray(img[:, ::-1]) if mirrored else img

    def to_oriented(self, mirrored: bool, scale: float = 1.0) -> np.ndarray:
        """3x3 transform from the original's pixels to those of `oriented(mirrored, scale)`."""
        h, w = self.original_image.shape[:2]
        view = self.oriented(mirrored, scale)
        reduce = np.diag([view.shape[1] / w, view.shape[0] / h, 1.0])
        return (mirror_x(view.shape[1]) if mirrored else np.eye(3)) @ reduce

    def query(self, contrast: float, enlarged: bool = False) -> LocalFeatures:
        """The query's keypoints, in the query's pixels; `enlarged`: found on it enlarged (finer detail)."""
        key = ("query", enlarged, contrast)
        if key not in self._cache:
            if not enlarged:
                self._cache[key] = _alignment_features(self.query_image, contrast)
            else:
                up = self.enlargement
                enlarged_query = cv2.resize(self.query_image, None, fx=up, fy=up, interpolation=cv2.INTER_CUBIC)
                big = _alignment_features(enlarged_query, contrast)
                self._cache[key] = LocalFeatures(np.hstack([big.keypoints[:, :2] / up, big.keypoints[:, 2:]]), big.descriptors)
        return self._cache[key]

    def query_views(self, contrast: float) -> list[LocalFeatures]:
        """The query as is, and enlarged when it is small enough to gain from it."""
        views = [self.query(contrast)]
        if self.enlargement > 1:
            views.append(self.query(contrast, enlarged=True))
        return views

    def matches(
        self, query: LocalFeatures, contrast: float, mirrored: bool, scale: float = 1.0
    ) -> tuple[np.ndarray, np.ndarray, int]:
        """(original points, in `oriented(mirrored, scale)`'s pixels; query points) of the ratio-test matches,
        and their number."""
        o = self.original(contrast, mirrored, scale)
        pairs = ratio_matches(query.descriptors, o.descriptors)
        return o.keypoints[pairs[:, 1], :2], query.keypoints[pairs[:, 0], :2], len(pairs)


def _align_keypoints(features: PairFeatures, contrast: float) -> Alignment | None:
    ow, oh = features.original_image.shape[1], features.original_image.shape[0]
    q = features.query(contrast)
    candidates: list[Alignment] = []
    for mirrored in (False, True):
        src, dst, n = features.matches(q, contrast, mirrored)
        if n < MIN_MATCHES:
            continue
        flip = mirror_x(ow) if mirrored else np.eye(3)
        # plausibility is judged on the fit itself (flipped original -> query); composed with the
        # flip, a mirrored transform always reverses orientation, which the check would refuse
        h, inl = fit_homography(src, dst, LOCALIZE_FIT)
        if h is not None and inl.sum() >= MIN_INLIERS and is_plausible(h, (ow, oh)):
            candidates.append(Alignment(h @ flip, int(inl.sum()), n, mirrored, "keypoints", dst[inl], contrast=contrast))
        a, inl2 = fit_similarity(src, dst, LOCALIZE_FIT)
        if a is not None and inl2.sum() >= MIN_SIMILARITY_INLIERS:
            s = np.vstack([a, [0, 0, 1]])
            if is_plausible(s, (ow, oh)):
                colour, edges = _agreement_near(features, a, dst[inl2], mirrored)
                if colour >= MIN_SIMILARITY_AGREEMENT and edges >= MIN_EDGE_AGREEMENT:
                    fit = Alignment(s @ flip, int(inl2.sum()), n, mirrored, "keypoints-similarity", dst[inl2], colour, contrast)
                    candidates.append(replace(fit, edge_agreement=edges))
    if not candidates:
        return None
    # prefer a homography when it is well supported, else the best-supported fit
    homs = [c for c in candidates if c.method == "keypoints"]
    return max(homs, key=lambda c: c.inliers) if homs else max(candidates, key=lambda c: c.inliers)


def _agreement_near(
    features: PairFeatures, a: np.ndarray, points: np.ndarray, mirrored: bool, scale: float = 1.0
) -> tuple[float, float]:
    """Shares of the query's pixels near `points` (a fit's inliers, query pixels) that the original's view
    `features.oriented(mirrored, scale)`, warped by the 2x3 fit `a`, agrees with: in colour
    (`alignment.agreement_over`), and of their edge pixels, in edges (`alignment.edge_agreement_over`).

    Three to six keypoint pairs can agree on a similarity transform by chance between unrelated photos
    (about one pair in 75, bench/RESULTS.md "Session 18"); the pixels around them then disagree, or agree
    only in a shared flat colour, where a true fit's colours and edges agree."""
    query, view = features.query_image, features.oriented(mirrored, scale)
    near = near_points(points, query.shape[:2])
    return pixel_agreements(query, near, view, a)


def _align_confirmed_by_pixels(
    query: np.ndarray, original: np.ndarray, features: PairFeatures | None = None, scales: tuple[float, ...] = (1.0,)
) -> Alignment | None:
    """The similarity fit (MIN_CONFIRMED_INLIERS or more inliers) whose original agrees best with the query near
    its inliers, if that agreement reaches MIN_PIXEL_AGREEMENT; None otherwise.

    A small paste yields a handful of keypoint matches, as many as chance gives an unrelated pair; the
    pixels tell them apart: aligned by the true transform, the original's pixels around the inliers are the
    query's (measured on CASIA donors that do not align by keypoints, against unrelated pairs: bench/RESULTS.md).
    The query's keypoints are taken as it is and enlarged (a small paste then shows detail at the scales its
    source's keypoints were found at), the original's at each of `scales`.
    """
    features = features or PairFeatures(query, original)
    best: Alignment | None = None
    for scale in scales:
        for contrast in CONTRAST_THRESHOLDS:
            for mirrored in (False, True):
                for q in features.query_views(contrast):
                    src, dst, n = features.matches(q, contrast, mirrored, scale)
                    found = _confirmed_fit(features, src, dst, n, mirrored, contrast, scale)
                    if found is not None and (best is None or found.pixel_agreement > best.pixel_agreement):
                        best = found
    return best


def _confirmed_fit(
    features: PairFeatures, src: np.ndarray, dst: np.ndarray, n: int, mirrored: bool, contrast: float, scale: float = 1.0
) -> Alignment | None:
    """The similarity fit of src -> dst if it has MIN_CONFIRMED_INLIERS inliers and the original's pixels,
    so aligned, agree with the query's near them on MIN_PIXEL_AGREEMENT of the pixels and MIN_EDGE_AGREEMENT of the
    edges; else None.
    `src` is in the pixels of the original's view `features.oriented(mirrored, scale)`."""
    o = features.oriented(mirrored, scale)
    if len(src) < MIN_MATCHES:
        return None
    a, inl = fit_similarity(src, dst, LOCALIZE_FIT)
    if a is None or inl.sum() < MIN_CONFIRMED_INLIERS or not is_plausible(np.vstack([a, [0, 0, 1]]), o.shape[1::-1]):
        return None
    agree, edges = _agreement_near(features, a, dst[inl], mirrored, scale)
    if agree < MIN_PIXEL_AGREEMENT or edges < MIN_EDGE_AGREEMENT:
        return None
    s = np.vstack([a, [0, 0, 1]]) @ features.to_oriented(mirrored, scale)
    return Alignment(s, int(inl.sum()), n, mirrored, "keypoints-pixels", dst[inl], agree, contrast, scale, edges)


def further_placements(features: PairFeatures, first: Alignment, limit: int = MAX_FURTHER_PLACEMENTS) -> list[Alignment]:
    """Other places in the query where the original's content was pasted (an object pasted several times, or
    several parts of one donor), each as its own alignment.

    A single fit explains one placement; the matches of the others are its outliers. Matches
    whose query point lies in a placement already found are set aside and a similarity is fitted
    to the rest, as is and mirrored, the query as is and enlarged; a fit counts only when the
    original's pixels, so aligned, agree with the query's near its inliers (as for a small paste:
    chance fits of a few matches do not). Up to `limit` placements after `first`.
    """
    if first.contrast is None or limit <= 0:
        return []
    query = features.query_image
    taken = _grown_hull(first.query_points, query.shape[:2])
    sets = [
        (mirrored, *features.matches(q, first.contrast, mirrored, first.original_scale))
        for mirrored in (False, True)
        for q in features.query_views(first.contrast)
    ]
    found: list[Alignment] = []
    while len(found) < limit:
        best: Alignment | None = None
        for mirrored, src, dst, n in sets:
            if not len(dst):
                continue
            xy = np.clip(np.round(dst).astype(np.int64), 0, [query.shape[1] - 1, query.shape[0] - 1])
            free = ~taken[xy[:, 1], xy[:, 0]]
            fit = _confirmed_fit(features, src[free], dst[free], n, mirrored, first.contrast, first.original_scale)
            if fit is not None and (best is None or (fit.inliers, fit.pixel_agreement) > (best.inliers, best.pixel_agreement)):
                best = fit
        if best is None:
            break
        found.append(best)
        taken |= _grown_hull(best.query_points, query.shape[:2])
    return found


def _grown_hull(points: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    """bool [H, W]: the convex hull of `points` grown by SUPPORT_GROW of the longer side (a disc per point
    when fewer than three): the area a placement's matches vouch for."""
    h, w = shape
    out = np.zeros((h, w), np.uint8)
    if len(points) >= 3:
        cv2.fillPoly(out, [cv2.convexHull(points.astype(np.float32)).astype(np.int32)], 1)
    else:
        for x, y in points:
            cv2.circle(out, (int(round(x)), int(round(y))), 1, 1, -1)
    r = max(3, int(SUPPORT_GROW * max(w, h)))
    return cv2.dilate(out, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))) > 0


def _alignment_features(rgb: np.ndarray, contrast: float) -> LocalFeatures:
    """Keypoints of a photo already at WORK_SIDE: all of them, ties included (no resize, no cut)."""
    return extract(rgb, ALIGN_KEYPOINTS, max_side=None, contrast=contrast, keep_ties=True)


def localize(
    query: np.ndarray,
    original: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    teacher: Teacher | None = None,
    object_pair: tuple[np.ndarray, np.ndarray] | None = None,
    relation: Relation | str | None = None,
) -> LocalizeResult:
    """Mask and heatmap of the manipulated region of `query` (RGB uint8), given `original`.

    `relation` None or "auto" detects whether `original` is the host or a donor.
    A donor's content pasted in several places is found in each (`further_placements`).
    """
    relation = None if relation is None else parse(Relation, relation, "relation").value
    relation = None if relation == Relation.AUTO.value else relation
    qh0, qw0 = query.shape[:2]
    q, sq = shrink_to_side(query, WORK_SIDE)
    o, so = shrink_to_side(original, WORK_SIDE)
    pair = None
    if object_pair is not None:
        pair = (np.asarray(object_pair[0]) * sq, np.asarray(object_pair[1]) * so)
    features = PairFeatures(q, o)
    al = align(q, o, pair, features)
    qh, qw = q.shape[:2]
    query_map = teacher.features(q).s16 if teacher is not None else None
    change, fp = _change_map(q, o, al.homography, teacher, query_map)
    agree = fp & (change < AGREE_BELOW)
    explained = float(agree.mean())
    rel = relation or ("host" if is_host_relation(explained, al.query_points, qw, qh) else "donor")
    further: list[Alignment] = []
    if rel == "host":
        heat, owner = np.where(fp, change, 0.0), np.zeros((qh, qw), np.uint8)
    else:
        heats = [_donor_heat(change, fp, al.query_points, qw, qh)]
        further = further_placements(features, al)
        for p in further:
            c, f = _change_map(q, o, p.homography, teacher, query_map)
            heats.append(_donor_heat(c, f, p.query_points, qw, qh))
        stacked = np.stack(heats)
        heat, owner = stacked.max(0), stacked.argmax(0).astype(np.uint8)
    heat = cv2.GaussianBlur(heat.astype(np.float32), (0, 0), HEAT_BLUR)
    mask = _moved_edge(clean_mask(heat >= threshold), DONOR_EDGE if rel == "donor" else -HOST_EDGE)
    placement = np.where(mask > 0, owner + 1, 0).astype(np.uint8)
    if (qw, qh) != (qw0, qh0):
        heat = cv2.resize(heat, (qw0, qh0), interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(mask, (qw0, qh0), interpolation=cv2.INTER_NEAREST)
        placement = cv2.resize(placement, (qw0, qh0), interpolation=cv2.INTER_NEAREST)
    changed = float((mask > 0).mean())
    score = float(heat[mask > 0].mean()) if changed > 0 else 0.0
    # The written heatmap folds the cleaned mask in: at 128 it is exactly the mask; above,
    # the surest core of it; below, also the raw evidence that the clean-up dropped.
    heat = 0.5 * np.clip(heat, 0.0, 0.998) + 0.5 * (mask > 0)
    heat_u8 = np.clip(heat * 255.0 + 0.5, 0, 255).astype(np.uint8)

    # alignment ran on views reduced to WORK_SIDE; the caller reads the transforms in its own arrays' pixels
    def in_caller_pixels(a: Alignment) -> Alignment:
        return replace(a, homography=rescaled(a.homography, (1 / so, 1 / so), (1 / sq, 1 / sq)), query_points=a.query_points / sq)

    return LocalizeResult(
        mask, heat_u8, in_caller_pixels(al), rel, explained, changed, score, [in_caller_pixels(p) for p in further], placement
    )


def _moved_edge(mask: np.ndarray, pixels: int) -> np.ndarray:
    """`mask` (uint8 0/255) grown by `pixels` (> 0) or shrunk by -`pixels` (< 0) all round."""
    if pixels == 0 or not mask.any():
        return mask
    r = abs(pixels)
    disc = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1))
    return cv2.dilate(mask, disc) if pixels > 0 else cv2.erode(mask, disc)


def _change_map(
    q: np.ndarray, o: np.ndarray, homography: np.ndarray, teacher: Teacher | None, query_map: np.ndarray | None
) -> tuple[np.ndarray, np.ndarray]:
    """(change score 0..1 per query pixel, bool footprint of the warped original) for `o` warped onto `q`.

    Colour difference (blurred against JPEG and resampling noise) combined with the
    teacher's feature difference (Eq. 9) when a teacher is given (`query_map`: its map of `q`).
    """
    qh, qw = q.shape[:2]
    warped = cv2.warpPerspective(o, homography, (qw, qh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    fp = footprint(homography, (o.shape[1], o.shape[0]), (qw, qh))
    fp = cv2.erode(fp, np.ones((FOOTPRINT_ERODE, FOOTPRINT_ERODE), np.uint8)) > 0
    diff = colour_difference(q, warped)
    pix = np.clip((diff - PIXEL_NOISE) / PIXEL_RANGE, 0.0, 1.0)  # ~0 for recompression noise, 1 for a real change
    if teacher is not None and query_map is not None:
        fw = teacher.features(warped).s16
        feat = np.clip(feature_difference(query_map, fw, (qw, qh)) / FEATURE_RANGE, 0, 1)
        change = np.sqrt(pix * (FEATURE_FLOOR + (1.0 - FEATURE_FLOOR) * feat))
    else:
        change = pix
    return cv2.GaussianBlur(change.astype(np.float32), (0, 0), CHANGE_BLUR), fp


def _donor_heat(change: np.ndarray, fp: np.ndarray, points: np.ndarray, w: int, h: int) -> np.ndarray:
    """Where the query matches the warped donor, kept to the regions its keypoint matches support."""
    agree = np.where(fp, 1.0 - change, 0.0).astype(np.float32)
    support = _grown_hull(points, (h, w)) if len(points) >= 3 else fp
    # keep connected agreeing regions that touch the supported area
    strong = (agree >= AGREE_BELOW).astype(np.uint8)
    n, labels = cv2.connectedComponents(strong, connectivity=8)
    touched = np.unique(labels[support & (strong > 0)])
    touched = touched[touched > 0]
    keep = np.isin(labels, touched)
    return np.where(keep | support, agree, agree * UNSUPPORTED_WEIGHT) * np.where(keep, 1.0, DETACHED_WEIGHT)
