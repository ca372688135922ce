"""`oesir localize`: where was the query changed, given an original it was made from.

1. Align: RootSIFT matches (ratio test) between query and original, and
   between query and the mirrored original; RANSAC homography on the better
   one. Too few inliers: a similarity fit from as few as three inliers (the
   query's keypoints also taken on it enlarged, as a small paste needs) that
   the original's pixels confirm around those inliers once aligned. Else the
   transform of the best-matching object pair (the paper's Eq. 8), when one is
   given. Otherwise AlignmentError.
2. Relation: warp the original into the query frame and measure how much of
   the query it explains. Most of it: the original is the **host**, and the
   manipulated region is where the two disagree. A part: it is the **donor**,
   and the manipulated region is the part of the query that matches it.
3. Score map: colour difference at full resolution (blurred against JPEG and
   resampling noise) combined with the teacher feature difference (Eq. 9);
   outside the warped original's footprint nothing is called manipulated.
   Morphology and small-component removal clean the binary mask.
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import cv2
import numpy as np

from .alignment import LOCALIZE_FIT, agreement_over, fit_homography, fit_similarity, is_host_relation, ratio_matches
from .choices import Relation, parse
from .errors import OesirError
from .geometry import box_similarity, footprint, is_plausible, mirror_x, rescaled
from .keypoints import LocalFeatures, extract
from .pixels import clean_mask, colour_difference, feature_difference, shrink_to_side
from .teacher import Teacher

MIN_INLIERS = 12  # a homography needs this many consistent matches ...
MIN_SIMILARITY_INLIERS = 6  # ... a similarity transform this many
MIN_MATCHES = 4  # fewer ratio-test matches than this: nothing to fit
MIN_CONFIRMED_INLIERS = 3  # a similarity fit with fewer inliers (3-5) is accepted only when pixels confirm it ...
MIN_PIXEL_AGREEMENT = 0.4  # ... by agreeing with the query on at least this share of the pixels near its inliers
CONFIRM_RADIUS = 0.03  # "near": within this share of the query's longer side (at least CONFIRM_MIN_RADIUS pixels)
CONFIRM_MIN_RADIUS = 6
CONFIRM_UPSCALE = 2.0  # the query's keypoints are also taken on it enlarged this much (at most to WORK_SIDE)
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
    pixel_agreement: float | None = None  # "keypoints-pixels": share of the pixels near the inliers that agree


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
        a = self.alignment
        return {
            "relation": self.relation,
            "verified": self.verified,
            "homography": [[round(float(v), 6) for v in row] for row in a.homography],
            "inliers": a.inliers,
            "matches": a.matches,
            "mirrored": a.mirrored,
            "alignment": a.method,
            "pixel_agreement": None if a.pixel_agreement is None else round(a.pixel_agreement, 4),
            "explained_share": round(self.explained_share, 4),
            "changed_share": round(self.changed_share, 4),
            "score": round(self.score, 4),
        }


def align(query: np.ndarray, original: np.ndarray, object_pair: tuple[np.ndarray, np.ndarray] | None = None) -> Alignment:
    """Transform original -> query from keypoints (mirror tried too), else from an object pair.

    A homography needs MIN_INLIERS consistent matches; a small pasted object
    often yields fewer, so a similarity transform (4 degrees of freedom, far
    harder to fit by chance) is accepted from MIN_SIMILARITY_INLIERS. Flat
    photos (sea, sky) have few keypoints at SIFT's usual contrast threshold, so
    when nothing aligns the keypoints are taken again at a low threshold.
    """
    for contrast in CONTRAST_THRESHOLDS:
        found = _align_keypoints(query, original, contrast)
        if found is not None:
            return found
    found = _align_confirmed_by_pixels(query, original)
    if found is not None:
        return found
    if object_pair is not None:
        q_box, o_box = object_pair
        return Alignment(box_similarity(o_box, q_box), 0, 0, False, "objects", np.zeros((0, 2), np.float32))
    raise AlignmentError(
        f"could not align the photos: fewer than {MIN_SIMILARITY_INLIERS} consistent keypoint matches; are they related?"
    )


def _align_keypoints(query: np.ndarray, original: np.ndarray, contrast: float) -> Alignment | None:
    q = _alignment_features(query, contrast)
    ow, oh = original.shape[1], original.shape[0]
    candidates: list[Alignment] = []
    for mirrored in (False, True):
        o = _alignment_features(np.ascontiguousarray(original[:, ::-1]) if mirrored else original, contrast)
        pairs = ratio_matches(q.descriptors, o.descriptors)
        if len(pairs) < MIN_MATCHES:
            continue
        src, dst = o.keypoints[pairs[:, 1], :2], q.keypoints[pairs[:, 0], :2]
        flip = mirror_x(ow) if mirrored else np.eye(3)
        # plausibility is judged on the fit itself (flipped original -> query); composed with the
        # flip, a mirrored transform always reverses orientation, which the check would refuse
        h, inl = fit_homography(src, dst, LOCALIZE_FIT)
        if h is not None and inl.sum() >= MIN_INLIERS and is_plausible(h, (ow, oh)):
            candidates.append(Alignment(h @ flip, int(inl.sum()), len(pairs), mirrored, "keypoints", dst[inl]))
        a, inl2 = fit_similarity(src, dst, LOCALIZE_FIT)
        if a is not None and inl2.sum() >= MIN_SIMILARITY_INLIERS:
            s = np.vstack([a, [0, 0, 1]])
            if is_plausible(s, (ow, oh)):
                candidates.append(Alignment(s @ flip, int(inl2.sum()), len(pairs), mirrored, "keypoints-similarity", dst[inl2]))
    if not candidates:
        return None
    # prefer a homography when it is well supported, else the best-supported fit
    homs = [c for c in candidates if c.method == "keypoints"]
    return max(homs, key=lambda c: c.inliers) if homs else max(candidates, key=lambda c: c.inliers)


def _align_confirmed_by_pixels(query: np.ndarray, original: np.ndarray) -> Alignment | None:
    """The similarity fit (MIN_CONFIRMED_INLIERS or more inliers) whose original agrees best with the query near
    its inliers, if that agreement reaches MIN_PIXEL_AGREEMENT; None otherwise.

    A small paste yields a handful of keypoint matches, as many as chance gives an unrelated pair; the
    pixels tell them apart: aligned by the true transform, the original's pixels around the inliers are the
    query's (measured on CASIA donors that do not align by keypoints, against unrelated pairs: bench/RESULTS.md).
    The query's keypoints are taken as it is and enlarged (a small paste then shows detail at the scales its
    source's keypoints were found at).
    """
    ow, oh = original.shape[1], original.shape[0]
    radius = max(CONFIRM_MIN_RADIUS, round(CONFIRM_RADIUS * max(query.shape[:2])))
    up = min(CONFIRM_UPSCALE, WORK_SIDE / max(query.shape[:2]))
    best: Alignment | None = None
    for contrast in CONTRAST_THRESHOLDS:
        views = [_alignment_features(query, contrast)]
        if up > 1:
            big = _alignment_features(cv2.resize(query, None, fx=up, fy=up, interpolation=cv2.INTER_CUBIC), contrast)
            views.append(LocalFeatures(np.hstack([big.keypoints[:, :2] / up, big.keypoints[:, 2:]]), big.descriptors))
        for mirrored in (False, True):
            o = np.ascontiguousarray(original[:, ::-1]) if mirrored else original
            fo = _alignment_features(o, contrast)
            for q in views:
                pairs = ratio_matches(q.descriptors, fo.descriptors)
                if len(pairs) < MIN_MATCHES:
                    continue
                src, dst = fo.keypoints[pairs[:, 1], :2], q.keypoints[pairs[:, 0], :2]
                a, inl = fit_similarity(src, dst, LOCALIZE_FIT)
                if a is None or inl.sum() < MIN_CONFIRMED_INLIERS or not is_plausible(np.vstack([a, [0, 0, 1]]), (ow, oh)):
                    continue
                agree = agreement_over(query, _near(dst[inl], query.shape[:2], radius), o, a)
                if agree >= MIN_PIXEL_AGREEMENT and (best is None or agree > best.pixel_agreement):
                    flip = mirror_x(ow) if mirrored else np.eye(3)
                    s = np.vstack([a, [0, 0, 1]]) @ flip
                    best = Alignment(s, int(inl.sum()), len(pairs), mirrored, "keypoints-pixels", dst[inl], agree)
    return best


def _near(points: np.ndarray, shape: tuple[int, int], radius: int) -> np.ndarray:
    """bool [H, W]: within `radius` pixels of any of `points`."""
    out = np.zeros(shape, np.uint8)
    for x, y in points:
        cv2.circle(out, (int(round(x)), int(round(y))), radius, 1, -1)
    return out > 0


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
    """
    relation = None if relation is None else parse(Relation, relation, "relation").value
    relation = None if relation == Relation.AUTO.value else relation
    qh0, qw0 = query.shape[:2]
    q, sq = shrink_to_side(query, WORK_SIDE)
    o, so = shrink_to_side(original, WORK_SIDE)
    pair = None
    if object_pair is not None:
        pair = (np.asarray(object_pair[0]) * sq, np.asarray(object_pair[1]) * so)
    al = align(q, o, pair)
    qh, qw = q.shape[:2]
    warped = cv2.warpPerspective(o, al.homography, (qw, qh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    fp = footprint(al.homography, (o.shape[1], o.shape[0]), (qw, qh))
    fp = cv2.erode(fp, np.ones((FOOTPRINT_ERODE, FOOTPRINT_ERODE), np.uint8)) > 0
    diff = colour_difference(q, warped)
    pix = np.clip((diff - PIXEL_NOISE) / PIXEL_RANGE, 0.0, 1.0)  # ~0 for recompression noise, 1 for a real change
    if teacher is not None:
        fq = teacher.features(q).s16
        fw = teacher.features(warped).s16
        feat = np.clip(feature_difference(fq, fw, (qw, qh)) / FEATURE_RANGE, 0, 1)
        change = np.sqrt(pix * (FEATURE_FLOOR + (1.0 - FEATURE_FLOOR) * feat))
    else:
        change = pix
    change = cv2.GaussianBlur(change.astype(np.float32), (0, 0), CHANGE_BLUR)
    agree = fp & (change < AGREE_BELOW)
    explained = float(agree.mean())
    rel = relation or ("host" if is_host_relation(explained, al.query_points, qw, qh) else "donor")
    if rel == "host":
        heat = np.where(fp, change, 0.0)
    else:
        heat = _donor_heat(change, fp, al.query_points, qw, qh)
    heat = cv2.GaussianBlur(heat.astype(np.float32), (0, 0), HEAT_BLUR)
    mask = clean_mask(heat >= threshold)
    if (qw, qh) != (qw0, qh0):
        heat = cv2.resize(heat, (qw0, qh0), interpolation=cv2.INTER_LINEAR)
        mask = cv2.resize(mask, (qw0, qh0), interpolation=cv2.INTER_NEAREST)
    changed = float((mask > 0).mean())
    score = float(heat[mask > 0].mean()) if changed > 0 else 0.0
    # The written heatmap folds the cleaned mask in: at 128 it is exactly the mask; above,
    # the surest core of it; below, also the raw evidence that the clean-up dropped.
    heat = 0.5 * np.clip(heat, 0.0, 0.998) + 0.5 * (mask > 0)
    heat_u8 = np.clip(heat * 255.0 + 0.5, 0, 255).astype(np.uint8)
    # alignment ran on views reduced to WORK_SIDE; the caller reads the transform in its own arrays' pixels
    al = replace(al, homography=rescaled(al.homography, (1 / so, 1 / so), (1 / sq, 1 / sq)), query_points=al.query_points / sq)
    return LocalizeResult(mask, heat_u8, al, rel, explained, changed, score)


def _donor_heat(change: np.ndarray, fp: np.ndarray, points: np.ndarray, w: int, h: int) -> np.ndarray:
    """Where the query matches the warped donor, kept to the regions its keypoint matches support."""
    agree = np.where(fp, 1.0 - change, 0.0).astype(np.float32)
    support = np.zeros((h, w), np.uint8)
    if len(points) >= 3:
        hull = cv2.convexHull(points.astype(np.float32)).astype(np.int32)
        cv2.fillPoly(support, [hull], 1)
        r = max(3, int(SUPPORT_GROW * max(w, h)))
        support = cv2.dilate(support, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    else:
        support[fp] = 1
    # keep connected agreeing regions that touch the supported area
    strong = (agree >= AGREE_BELOW).astype(np.uint8)
    n, labels = cv2.connectedComponents(strong, connectivity=8)
    touched = np.unique(labels[(support > 0) & (strong > 0)])
    touched = touched[touched > 0]
    keep = np.isin(labels, touched)
    return np.where(keep | (support > 0), agree, agree * UNSUPPORTED_WEIGHT) * np.where(keep, 1.0, DETACHED_WEIGHT)
