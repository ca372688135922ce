"""Aligning a stored photo with a query: keypoint matching, robust fits, and what the alignment explains.

Search and localize ask the same question of a (query, original) pair: which
keypoints match, which transform maps the original onto the query, and how much
of the query the aligned original explains. Both take their answers from here.

Two host rules, for two questions:

* `search` chooses the host *among candidates* (the vote leaders and nearest
  whole images): it compares `Explained.host_score` of each, relatively, on a
  cheap colour-only agreement (`explained_by`), for up to five photos per query.
* `localize` classifies *one* pair with no others to compare against, after it
  has computed the full change map (colour and teacher features, Eq. 9):
  `is_host_relation` applies absolute thresholds to that map's agreement and to
  the spread of the keypoint inliers.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import cv2
import numpy as np

from .geometry import hull_share
from .pixels import colour_difference

RATIO = 0.8  # Lowe's ratio test: nearest < RATIO x second nearest
# A paste shrunk 2-4x keeps only detail its source shows at coarse scales, where SIFT finds few repeatable
# keypoints: when the original's own keypoints fit nothing, they are taken again on it reduced to these scales.
# Not 1/4: so reduced, a photo keeps too few keypoints, and chance fits agreed with unrelated pixels (RESULTS).
SHRUNK_ORIGINAL_SCALES = (1 / 2, 1 / 3)


@dataclass(frozen=True)
class FitParams:
    """RANSAC settings of one use of a robust fit (fixed seed: the same photos always give the same fit)."""

    threshold: float  # reprojection threshold, pixels of the frame the points are in
    seed: int
    max_iters: int = 2000  # OpenCV's default for estimateAffinePartial2D


SEARCH_FIT = FitParams(threshold=5.0, seed=7)  # host choice: query pixels at full size, many candidates per query
LOCALIZE_FIT = FitParams(threshold=4.0, seed=12345, max_iters=4000)  # one pair, at most WORK_SIDE pixels: fit harder
HOMOGRAPHY_CONFIDENCE = 0.999


def ratio_matches(a: np.ndarray, b: np.ndarray, ratio: float = RATIO) -> np.ndarray:
    """[M, 2] index pairs (a, b) passing Lowe's ratio test, in the order of `a` (L2, from one matrix product).

    For RootSIFT descriptors (integers 0..255 as float32) every dot product and
    norm is an exact integer in float32, so the distances equal a brute-force
    matcher's.
    """
    return ratio_matches_at(a, b, (ratio,))[0]


def ratio_matches_at(a: np.ndarray, b: np.ndarray, ratios: Sequence[float]) -> list[np.ndarray]:
    """`ratio_matches` at each of `ratios`, from one matrix product (the product is most of the cost)."""
    if len(a) < 2 or len(b) < 2:
        return [np.zeros((0, 2), np.int64) for _ in ratios]
    a, b = np.asarray(a, np.float32), np.asarray(b, np.float32)
    d2 = (b * b).sum(1)[None, :] - 2.0 * (a @ b.T)  # squared distance minus |a|^2, which ranks alike per row
    rows = np.arange(len(a))
    nearest = d2.argmin(1)
    first = d2[rows, nearest].copy()
    d2[rows, nearest] = np.inf
    second = d2.min(1)
    norm_a = (a * a).sum(1)
    first, second = np.sqrt(np.maximum(first + norm_a, 0)), np.sqrt(np.maximum(second + norm_a, 0))
    out = []
    for ratio in ratios:
        good = np.flatnonzero(first < ratio * second)
        out.append(np.stack([good, nearest[good]], 1).astype(np.int64))
    return out


def fit_similarity(src: np.ndarray, dst: np.ndarray, params: FitParams) -> tuple[np.ndarray | None, np.ndarray]:
    """2x3 similarity (rotation, one scale, translation) mapping src -> dst by RANSAC, and the inlier flags [N].

    Four degrees of freedom are far harder to fit by chance than a homography's
    eight, so a few matches (a small pasted object) can be trusted.
    """
    if len(src) < 2:
        return None, np.zeros(len(src), bool)
    cv2.setRNGSeed(params.seed)
    a, inl = cv2.estimateAffinePartial2D(
        src, dst, method=cv2.RANSAC, ransacReprojThreshold=params.threshold, maxIters=params.max_iters
    )
    if a is None or inl is None:
        return None, np.zeros(len(src), bool)
    return a, inl.ravel().astype(bool)


def fit_homography(src: np.ndarray, dst: np.ndarray, params: FitParams = LOCALIZE_FIT) -> tuple[np.ndarray | None, np.ndarray]:
    """3x3 homography mapping src -> dst (MAGSAC), and the inlier flags [N]."""
    if len(src) < 4:
        return None, np.zeros(len(src), bool)
    cv2.setRNGSeed(params.seed)
    h, inl = cv2.findHomography(
        src, dst, cv2.USAC_MAGSAC, params.threshold, maxIters=params.max_iters, confidence=HOMOGRAPHY_CONFIDENCE
    )
    if h is None:
        return None, np.zeros(len(src), bool)
    return h, inl.ravel().astype(bool)


# -- how much of the query an original explains (search's host choice) ---------------

AGREE_BLUR = 2.0  # Gaussian sigma before comparing colours: absorbs JPEG and resampling noise
AGREE_LAB = 12.0  # Lab distance below which a query pixel agrees with the aligned original
FRAME_SHARE = 0.1  # the outer band (this share of the smaller side) a pasted object seldom fills all round
MIN_FIT_INLIERS = 4


@dataclass(frozen=True)
class Explained:
    """How much of the query a stored photo explains, and where it does not (the candidate pasted region)."""

    share: float  # share of the query's pixels that agree with the aligned photo
    changed: np.ndarray | None  # uint8 0/255 [H, W]: inside the aligned photo but disagreeing; None if not aligned
    frame: float = 0.0  # the same share over the query's outer band (FRAME_SHARE of its smaller side)

    @classmethod
    def nothing(cls) -> Explained:
        return cls(0.0, None)

    @property
    def host_score(self) -> float:
        """A host explains most of the query and its frame: a pasted object seldom reaches the edges all round."""
        return 0.5 * (self.share + self.frame)


def explained_by(query: np.ndarray, original: np.ndarray, src: np.ndarray, dst: np.ndarray) -> Explained:
    """Align `original` to the query by the pairs src -> dst (similarity, RANSAC) and compare pixels."""
    h, w = query.shape[:2]
    a, inl = fit_similarity(src, dst, SEARCH_FIT)
    if a is None or inl.sum() < MIN_FIT_INLIERS:
        return Explained.nothing()
    warped, inside = _warped(original, a, (h, w))
    agree = colour_difference(query, warped, sigma=AGREE_BLUR) < AGREE_LAB
    band = max(1, round(FRAME_SHARE * min(h, w)))
    frame = np.ones((h, w), bool)
    frame[band:-band, band:-band] = False
    explained = inside & agree
    return Explained(float(explained.mean()), (inside & ~agree).astype(np.uint8) * 255, float(explained[frame].mean()))


def agreement_over(target: np.ndarray, mask: np.ndarray, original: np.ndarray, a: np.ndarray) -> float:
    """Share of `mask`'s pixels (bool [H, W] of `target`) that `original`, warped by the 2x3 transform `a`,
    covers and agrees with in colour (as `explained_by` compares a host).

    A few keypoints that agree on one transform may still be chance; the pixels they bring along are not:
    a pasted part matches its source pixel for pixel once aligned, an unrelated photo does not.
    """
    aligned = _aligned_around(target, mask, original, a)
    return 0.0 if aligned is None else _colour_share(*aligned)


EDGE_MIN_GRADIENT = 8.0  # Sobel magnitude (grey levels blurred by AGREE_BLUR) from which a target pixel has an edge
EDGE_MIN_COSINE = 0.8  # the aligned original's edge there points the same way (within ~37 degrees) ...
EDGE_MIN_STRENGTH = 0.5  # ... and is at least half as strong
EDGE_MIN_PIXELS = 20  # fewer edge pixels than this under the mask: nothing to confirm


def edge_agreement_over(target: np.ndarray, mask: np.ndarray, original: np.ndarray, a: np.ndarray) -> float:
    """Share of the edge pixels of `target` under `mask` (bool [H, W]) where `original`, warped by the 2x3
    transform `a`, has the same edge: its gradient points the same way and is comparably strong.

    Colour alone can agree by chance where two photos share a flat hue (sky, skin, a wall) next to a few
    chance keypoint matches; the edges of a pasted part lie exactly on its source's once aligned, and chance
    fits' do not (bench/RESULTS.md, "Session 18": true fits 0.40-1.0, unrelated pairs' 0.05-0.23)."""
    aligned = _aligned_around(target, mask, original, a)
    return 0.0 if aligned is None else _edge_share(*aligned)


def pixel_agreements(target: np.ndarray, mask: np.ndarray, original: np.ndarray, a: np.ndarray) -> tuple[float, float]:
    """(`agreement_over`, `edge_agreement_over`) from one warp of `original`: what a fit's pixels are checked by."""
    aligned = _aligned_around(target, mask, original, a)
    return (0.0, 0.0) if aligned is None else (_colour_share(*aligned), _edge_share(*aligned))


def _colour_share(target: np.ndarray, mask: np.ndarray, warped: np.ndarray, inside: np.ndarray) -> float:
    agree = colour_difference(target, warped, sigma=AGREE_BLUR) < AGREE_LAB
    return float((agree & inside)[mask].mean())


def _edge_share(target: np.ndarray, mask: np.ndarray, warped: np.ndarray, inside: np.ndarray) -> float:
    gx, gy = _gradients(target)
    ox, oy = _gradients(warped)
    strength, other = np.hypot(gx, gy), np.hypot(ox, oy)
    edges = mask & (strength > EDGE_MIN_GRADIENT)
    if edges.sum() < EDGE_MIN_PIXELS:
        return 0.0
    cosine = (gx * ox + gy * oy) / np.maximum(strength * other, 1e-6)
    same = inside & (cosine > EDGE_MIN_COSINE) & (other > EDGE_MIN_STRENGTH * strength)
    return float(same[edges].mean())


def _check_mask(target: np.ndarray, mask: np.ndarray) -> None:
    if target.shape[:2] != mask.shape:
        raise ValueError(f"mask {mask.shape} is not the size of the target {target.shape[:2]}")


AROUND_MARGIN = 10  # pixels kept around a mask: its pixels' blur and Sobel see what they would in the whole image


def _aligned_around(
    target: np.ndarray, mask: np.ndarray, original: np.ndarray, a: np.ndarray
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray] | None:
    """`target` and `mask` cut to the mask's box (grown by AROUND_MARGIN), and `original` warped by the 2x3
    transform `a` into that box with where it lands (None: an empty mask): a paste's pixels are a small part of
    the query, and comparing only there is what makes checking many fits cheap."""
    _check_mask(target, mask)
    if not mask.any():
        return None
    ys, xs = np.nonzero(mask)
    h, w = mask.shape
    y0, y1 = max(0, ys.min() - AROUND_MARGIN), min(h, ys.max() + 1 + AROUND_MARGIN)
    x0, x1 = max(0, xs.min() - AROUND_MARGIN), min(w, xs.max() + 1 + AROUND_MARGIN)
    shifted = np.asarray(a, np.float64).copy()
    shifted[:, 2] -= [x0, y0]
    warped, inside = _warped(original, shifted, (y1 - y0, x1 - x0))
    return target[y0:y1, x0:x1], mask[y0:y1, x0:x1], warped, inside


def _warped(original: np.ndarray, a: np.ndarray, shape: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
    """`original` warped by the 2x3 transform `a` into a frame of `shape` (H, W), and where it lands (bool)."""
    h, w = shape
    warped = cv2.warpAffine(original, a, (w, h), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT, borderValue=0)
    inside = cv2.warpAffine(np.full(original.shape[:2], 255, np.uint8), a, (w, h), flags=cv2.INTER_NEAREST) > 0
    return warped, inside


def _gradients(rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Sobel x and y of the grey levels blurred by AGREE_BLUR (float32)."""
    grey = cv2.GaussianBlur(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY).astype(np.float32), (0, 0), AGREE_BLUR)
    return cv2.Sobel(grey, cv2.CV_32F, 1, 0), cv2.Sobel(grey, cv2.CV_32F, 0, 1)


CONFIRM_RADIUS = 0.03  # "near" the inliers: within this share of the target's longer side ...
CONFIRM_MIN_RADIUS = 6  # ... and at least this many pixels


def near_points(points: np.ndarray, shape: tuple[int, int], radius: int | None = None) -> np.ndarray:
    """bool [H, W]: within `radius` pixels of any of `points` ([N, 2] x, y); by default the confirmation
    radius of an image of `shape` (CONFIRM_RADIUS of its longer side, at least CONFIRM_MIN_RADIUS)."""
    if radius is None:
        radius = max(CONFIRM_MIN_RADIUS, round(CONFIRM_RADIUS * max(shape)))
    out = np.zeros(shape, np.uint8)
    for x, y in points:
        cv2.circle(out, (int(round(x)), int(round(y))), radius, 1, -1)
    return out > 0


def on_mask(points: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """bool [N]: which of `points` ([N, 2] x, y; clipped to the image) fall on `mask` (bool [H, W])."""
    h, w = mask.shape
    xy = np.clip(np.round(points[:, :2]).astype(np.int64), 0, [w - 1, h - 1])
    return mask[xy[:, 1], xy[:, 0]]


def share_inside(points: np.ndarray, mask: np.ndarray) -> float:
    """Share of `points` ([N, 2] x, y) that fall on `mask` (bool [H, W]); 0 for none."""
    return float(on_mask(points, mask).mean()) if len(points) else 0.0


# -- localize's rule for one pair --------------------------------------------------

HOST_EXPLAINED_SHARE = 0.4  # the aligned original agrees with at least this share of the query ...
HOST_INLIER_HULL_SHARE = 0.35  # ... or its keypoint inliers spread over at least this share of it


def is_host_relation(explained_share: float, inlier_points: np.ndarray, width: int, height: int) -> bool:
    """Whether one aligned original is the query's host (else a donor): it explains most of the query.

    A donor agrees only where its object was pasted, and its inliers cluster
    there; a host agrees broadly, or (when much was changed) its inliers at
    least spread over the photo.
    """
    return explained_share >= HOST_EXPLAINED_SHARE or hull_share(inlier_points, width, height) >= HOST_INLIER_HULL_SHARE
