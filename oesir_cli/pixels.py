"""Pixel operations on aligned photos: colour and feature differences, mask clean-up, resizing.

Pure functions on arrays; search (the changed region) and localize (masks) share them.
"""

from __future__ import annotations

import cv2
import numpy as np

MIN_COMPONENT_SHARE = 0.0005  # mask components smaller than this share of the photo are noise


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


def clean_mask(binary: np.ndarray, min_share: float = MIN_COMPONENT_SHARE) -> np.ndarray:
    """Open, close, drop components under `min_share` of the photo, fill holes; uint8 0/255."""
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


def shrink_to_side(img: np.ndarray, side: int) -> tuple[np.ndarray, float]:
    """The image with its longer side at most `side` (never enlarged), and the scale applied."""
    h, w = img.shape[:2]
    s = min(1.0, side / max(h, w))
    if s < 1.0:
        img = cv2.resize(img, (int(round(w * s)), int(round(h * s))), interpolation=cv2.INTER_AREA)
    return img, s
