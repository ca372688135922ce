"""Small pure geometry functions (kornia-style): transforms, boxes, footprints."""

from __future__ import annotations

import cv2
import numpy as np


def box_similarity(src_box: np.ndarray, dst_box: np.ndarray) -> np.ndarray:
    """3x3 scale+translation that maps `src_box` onto `dst_box` (the paper's Eq. 8).

    One isotropic scale (geometric mean of the width and height ratios) keeps
    the object's shape; centres are aligned.
    """
    sx1, sy1, sx2, sy2 = map(float, src_box)
    dx1, dy1, dx2, dy2 = map(float, dst_box)
    s = np.sqrt(max(dx2 - dx1, 1e-6) / max(sx2 - sx1, 1e-6) * max(dy2 - dy1, 1e-6) / max(sy2 - sy1, 1e-6))
    tx = (dx1 + dx2) / 2 - s * (sx1 + sx2) / 2
    ty = (dy1 + dy2) / 2 - s * (sy1 + sy2) / 2
    return np.array([[s, 0, tx], [0, s, ty], [0, 0, 1]], np.float64)


def mirror_x(width: int) -> np.ndarray:
    """3x3 transform of a horizontal flip of an image `width` pixels wide."""
    return np.array([[-1, 0, width - 1], [0, 1, 0], [0, 0, 1]], np.float64)


def rescaled(h: np.ndarray, src_scale: tuple[float, float], dst_scale: tuple[float, float]) -> np.ndarray:
    """`h` (src -> dst) for the same two images resized by `src_scale` and `dst_scale` ((sx, sy) each).

    The homography between resized views is S_dst @ h @ S_src^-1; alignment runs
    on reduced views, while a reader applies the transform to the photos themselves.
    """
    s_dst = np.diag([dst_scale[0], dst_scale[1], 1.0])
    s_src_inv = np.diag([1.0 / src_scale[0], 1.0 / src_scale[1], 1.0])
    return s_dst @ np.asarray(h, np.float64) @ s_src_inv


def transform_points(h: np.ndarray, pts: np.ndarray) -> np.ndarray:
    """Apply a 3x3 homography to [N, 2] points."""
    p = np.c_[pts, np.ones(len(pts))] @ h.T
    return p[:, :2] / p[:, 2:3]


def footprint(h: np.ndarray, src_size: tuple[int, int], dst_size: tuple[int, int]) -> np.ndarray:
    """uint8 mask (dst frame) of where a (w, h)-sized source lands under `h` (255 inside)."""
    sw, sh = src_size
    corners = np.array([[0, 0], [sw - 1, 0], [sw - 1, sh - 1], [0, sh - 1]], np.float64)
    poly = transform_points(h, corners)
    mask = np.zeros((dst_size[1], dst_size[0]), np.uint8)
    if np.all(np.isfinite(poly)):
        cv2.fillPoly(mask, [np.round(poly).astype(np.int32)], 255)
    return mask


def is_plausible(h: np.ndarray, src_size: tuple[int, int], max_scale: float = 8.0) -> bool:
    """Rejects degenerate homographies: flips of orientation, extreme scale, strong perspective."""
    if h is None or not np.all(np.isfinite(h)):
        return False
    a = h[:2, :2] / h[2, 2]
    det = float(np.linalg.det(a))
    if det <= 0 or not (1 / max_scale**2 <= det <= max_scale**2):
        return False
    w, hh = src_size
    persp = abs(h[2, 0] / h[2, 2]) * w + abs(h[2, 1] / h[2, 2]) * hh
    return persp < 0.5


def hull_share(points: np.ndarray, width: int, height: int) -> float:
    """Area of the convex hull of `points` as a share of the image area."""
    if len(points) < 3:
        return 0.0
    hull = cv2.convexHull(points.astype(np.float32))
    return float(cv2.contourArea(hull)) / float(max(width * height, 1))
