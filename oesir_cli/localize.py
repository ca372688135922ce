"""`oesir localize`: where was the query changed, given an original it was made from.

1. Align: RootSIFT matches (ratio test) between query and original, and
   between query and the mirrored original; RANSAC homography on the better
   one. Too few inliers: the transform of the best-matching object pair
   (the paper's Eq. 8), when an engine is given. Otherwise AlignmentError.
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

from dataclasses import dataclass

import cv2
import numpy as np

from .geometry import box_similarity, footprint, hull_share, is_plausible, mirror_x, transform_points
from .local import rootsift

MIN_INLIERS = 12
MIN_SIMILARITY_INLIERS = 6
CONTRAST_THRESHOLDS = (0.04, 0.01)  # SIFT's default first; the low one only when nothing aligned
WORK_SIDE = 1024  # alignment and scoring run at most at this longer side
DEFAULT_THRESHOLD = 0.5
PIXEL_NOISE, PIXEL_RANGE = 4.0, 16.0  # Lab distance: below NOISE is recompression, NOISE+RANGE is a sure change
CHANGE_BLUR = 2.0
MIN_COMPONENT_SHARE = 0.0005


class AlignmentError(RuntimeError):
    """The two photos could not be aligned (unrelated, or too different)."""


@dataclass
class Alignment:
    """Homography mapping original pixels to query pixels, with its evidence."""

    homography: np.ndarray
    inliers: int
    matches: int
    mirrored: bool
    method: str  # "keypoints" | "objects"
    query_points: np.ndarray  # inlier positions in the query


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

    def as_dict(self) -> dict:
        a = self.alignment
        return {
            "relation": self.relation,
            "homography": [[round(float(v), 6) for v in row] for row in a.homography],
            "inliers": a.inliers,
            "matches": a.matches,
            "mirrored": a.mirrored,
            "alignment": a.method,
            "explained_share": round(self.explained_share, 4),
            "changed_share": round(self.changed_share, 4),
            "score": round(self.score, 4),
        }


def _sift_features(grey: np.ndarray, n: int = 4000, contrast: float = 0.04) -> tuple[np.ndarray, np.ndarray]:
    sift = cv2.SIFT_create(nfeatures=n, contrastThreshold=contrast)
    kps, desc = sift.detectAndCompute(grey, None)
    if desc is None or not kps:
        return np.zeros((0, 2), np.float32), np.zeros((0, 128), np.float32)
    return np.array([k.pt for k in kps], np.float32), rootsift(desc).astype(np.float32)


def _match(d1: np.ndarray, d2: np.ndarray, ratio: float = 0.8) -> list[tuple[int, int]]:
    if len(d1) < 2 or len(d2) < 2:
        return []
    knn = cv2.BFMatcher(cv2.NORM_L2).knnMatch(d1, d2, k=2)
    return [(m.queryIdx, m.trainIdx) for m, n in (p for p in knn if len(p) == 2) if m.distance < ratio * n.distance]


def _ransac(src: np.ndarray, dst: np.ndarray) -> tuple[np.ndarray | None, np.ndarray]:
    if len(src) < 4:
        return None, np.zeros(len(src), bool)
    cv2.setRNGSeed(12345)
    h, inl = cv2.findHomography(src, dst, cv2.USAC_MAGSAC, 4.0, maxIters=4000, confidence=0.999)
    if h is None:
        return None, np.zeros(len(src), bool)
    return h, inl.ravel().astype(bool)


def align(query: np.ndarray, original: np.ndarray, object_pair: tuple[np.ndarray, np.ndarray] | None = None) -> Alignment:
    """Transform original -> query from keypoints (mirror tried too), else from an object pair.

    A homography needs MIN_INLIERS consistent matches; a small pasted object
    often yields fewer, so a similarity transform (4 degrees of freedom, far
    harder to fit by chance) is accepted from MIN_SIMILARITY_INLIERS. Flat
    photos (sea, sky) have few keypoints at SIFT's usual contrast threshold, so
    when nothing aligns the keypoints are taken again at a low threshold.
    """
    qg = cv2.cvtColor(query, cv2.COLOR_RGB2GRAY)
    og = cv2.cvtColor(original, cv2.COLOR_RGB2GRAY)
    for contrast in CONTRAST_THRESHOLDS:
        found = _align_keypoints(qg, og, contrast)
        if found is not None:
            return found
    if object_pair is not None:
        q_box, o_box = object_pair
        return Alignment(box_similarity(o_box, q_box), 0, 0, False, "objects", np.zeros((0, 2), np.float32))
    raise AlignmentError(
        f"could not align the photos: fewer than {MIN_SIMILARITY_INLIERS} consistent keypoint matches; are they related?"
    )


def _align_keypoints(qg: np.ndarray, og: np.ndarray, contrast: float) -> Alignment | None:
    qpts, qdesc = _sift_features(qg, contrast=contrast)
    ow, oh = og.shape[1], og.shape[0]
    candidates: list[Alignment] = []
    for mirrored in (False, True):
        opts, odesc = _sift_features(og[:, ::-1].copy() if mirrored else og, contrast=contrast)
        pairs = _match(qdesc, odesc)
        if len(pairs) < 4:
            continue
        qi, oi = np.array(pairs).T
        src, dst = opts[oi], qpts[qi]
        flip = mirror_x(ow) if mirrored else np.eye(3)
        h, inl = _ransac(src, dst)
        if h is not None and inl.sum() >= MIN_INLIERS and is_plausible(h @ flip, (ow, oh)):
            candidates.append(Alignment(h @ flip, int(inl.sum()), len(pairs), mirrored, "keypoints", dst[inl]))
        cv2.setRNGSeed(12345)
        a, inl2 = cv2.estimateAffinePartial2D(src, dst, method=cv2.RANSAC, ransacReprojThreshold=4.0, maxIters=4000)
        if a is not None and inl2 is not None and inl2.sum() >= MIN_SIMILARITY_INLIERS:
            s = np.vstack([a, [0, 0, 1]]) @ flip
            inl2 = inl2.ravel().astype(bool)
            if is_plausible(s, (ow, oh)):
                candidates.append(Alignment(s, int(inl2.sum()), len(pairs), mirrored, "keypoints-similarity", dst[inl2]))
    if not candidates:
        return None
    # prefer a homography when it is well supported, else the best-supported fit
    homs = [c for c in candidates if c.method == "keypoints"]
    return max(homs, key=lambda c: c.inliers) if homs else max(candidates, key=lambda c: c.inliers)


def colour_difference(a: np.ndarray, b: np.ndarray, sigma: float = 1.5) -> np.ndarray:
    """Per-pixel Lab distance of two RGB images after a Gaussian blur (float32, Lab units)."""
    la = cv2.cvtColor(cv2.GaussianBlur(a, (0, 0), sigma), cv2.COLOR_RGB2Lab).astype(np.float32)
    lb = cv2.cvtColor(cv2.GaussianBlur(b, (0, 0), sigma), cv2.COLOR_RGB2Lab).astype(np.float32)
    return np.linalg.norm(la - lb, axis=2)


def feature_difference(fa: np.ndarray, fb: np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """Eq. 9: 1 - cosine similarity of two (C, h, w) feature maps, resized to `size` (w, h)."""
    na = fa / np.maximum(np.linalg.norm(fa, axis=0, keepdims=True), 1e-6)
    nb = fb / np.maximum(np.linalg.norm(fb, axis=0, keepdims=True), 1e-6)
    d = 1.0 - (na * nb).sum(0)
    return cv2.resize(d.astype(np.float32), size, interpolation=cv2.INTER_LINEAR)


def clean_mask(binary: np.ndarray, min_share: float | None = None) -> np.ndarray:
    """Open, close, drop small components, fill holes; uint8 0/255."""
    min_share = MIN_COMPONENT_SHARE if min_share is None else min_share
    m = (binary > 0).astype(np.uint8)
    k3 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (3, 3))
    k7 = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (7, 7))
    m = cv2.morphologyEx(m, cv2.MORPH_OPEN, k3)
    m = cv2.morphologyEx(m, cv2.MORPH_CLOSE, k7)
    n, labels, stats, _ = cv2.connectedComponentsWithStats(m, connectivity=8)
    keep = np.zeros(n, bool)
    keep[1:] = stats[1:, cv2.CC_STAT_AREA] >= min_share * m.size
    m = keep[labels].astype(np.uint8)
    # fill holes: background not connected to the border
    inv = (1 - m).astype(np.uint8)
    n, labels = cv2.connectedComponents(inv, connectivity=4)
    border = np.unique(np.r_[labels[0], labels[-1], labels[:, 0], labels[:, -1]])
    holes = ~np.isin(labels, border) & (inv > 0)
    m[holes] = 1
    return m * 255


def _resize_to(img: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    h, w = img.shape[:2]
    s = min(1.0, side / max(h, w))
    if s < 1.0:
        img = cv2.resize(img, (int(round(w * s)), int(round(h * s))), interpolation=cv2.INTER_AREA)
    return img, s


def localize(
    query: np.ndarray,
    original: np.ndarray,
    threshold: float = DEFAULT_THRESHOLD,
    teacher=None,
    object_pair: tuple[np.ndarray, np.ndarray] | None = None,
    relation: str | None = None,
) -> LocalizeResult:
    """Mask and heatmap of the manipulated region of `query` (RGB uint8), given `original`."""
    qh0, qw0 = query.shape[:2]
    q, sq = _resize_to(query, WORK_SIDE)
    o, so = _resize_to(original, WORK_SIDE)
    pair = None
    if object_pair is not None:
        pair = (np.asarray(object_pair[0]) * sq, np.asarray(object_pair[1]) * so)
    al = align(q, o, pair)
    qh, qw = q.shape[:2]
    warped = cv2.warpPerspective(o, al.homography, (qw, qh), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_REFLECT)
    fp = footprint(al.homography, (o.shape[1], o.shape[0]), (qw, qh))
    fp = cv2.erode(fp, np.ones((5, 5), np.uint8)) > 0
    diff = colour_difference(q, warped)
    pix = np.clip((diff - PIXEL_NOISE) / PIXEL_RANGE, 0.0, 1.0)  # ~0 for recompression noise, 1 for a real change
    if teacher is not None:
        fq = teacher.features(q).s16
        fw = teacher.features(warped).s16
        feat = np.clip(feature_difference(fq, fw, (qw, qh)) / 0.5, 0, 1)
        change = np.sqrt(pix * (0.25 + 0.75 * feat))
    else:
        change = pix
    change = cv2.GaussianBlur(change.astype(np.float32), (0, 0), CHANGE_BLUR)
    agree = fp & (change < 0.5)
    explained = float(agree.mean())
    rel = relation or ("host" if explained >= 0.4 or hull_share(al.query_points, qw, qh) >= 0.35 else "donor")
    if rel == "host":
        heat = np.where(fp, change, 0.0)
    else:
        heat = _donor_heat(change, fp, al.query_points, qw, qh)
    heat = cv2.GaussianBlur(heat.astype(np.float32), (0, 0), 1.5)
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
    return LocalizeResult(mask, heat_u8, al, rel, explained, changed, score)


def _donor_heat(change: np.ndarray, fp: np.ndarray, points: np.ndarray, w: int, h: int) -> np.ndarray:
    """Where the query matches the warped donor, kept to the regions its keypoint matches support."""
    agree = np.where(fp, 1.0 - change, 0.0).astype(np.float32)
    support = np.zeros((h, w), np.uint8)
    if len(points) >= 3:
        hull = cv2.convexHull(points.astype(np.float32)).astype(np.int32)
        cv2.fillPoly(support, [hull], 1)
        r = max(3, int(0.03 * max(w, h)))
        support = cv2.dilate(support, cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * r + 1, 2 * r + 1)))
    else:
        support[fp] = 1
    # keep connected agreeing regions that touch the supported area
    strong = (agree >= 0.5).astype(np.uint8)
    n, labels = cv2.connectedComponents(strong, connectivity=8)
    touched = np.unique(labels[(support > 0) & (strong > 0)])
    touched = touched[touched > 0]
    keep = np.isin(labels, touched)
    return np.where(keep | (support > 0), agree, agree * 0.3) * np.where(keep, 1.0, 0.6)


def warp_points(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Convenience re-export for callers drawing matches."""
    return transform_points(h, pts)
