"""Object embeddings: ROIAlign (max) over the teacher's maps, PCA whitening, L2 norm.

Pure numpy; the functions take arrays and return arrays so the benchmark and
the tests can call them on their own.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .teacher import FeatureMaps

ROI_MAX_SAMPLES = 14  # at most this many bilinear samples per box side


def roi_align_max(fmap: np.ndarray, boxes: np.ndarray, stride: float, max_samples: int = ROI_MAX_SAMPLES) -> np.ndarray:
    """Max over bilinear samples of `fmap` (C, H, W) inside each box [N, 4] (map-input pixels).

    Like ONNX RoiAlign in max mode with one output bin: samples sit on a regular
    grid (about one per map cell, at least 2 and at most `max_samples` a side)
    inside the box, each sample bilinearly interpolated.
    """
    c, h, w = fmap.shape
    out = np.empty((len(boxes), c), np.float32)
    cells = np.ascontiguousarray(fmap.reshape(c, -1).T)  # [H x W, C]: a sample's channels are one contiguous row
    for i, (x1, y1, x2, y2) in enumerate(np.asarray(boxes, np.float64) / stride):
        nx = int(np.clip(np.ceil(x2 - x1), 2, max_samples))
        ny = int(np.clip(np.ceil(y2 - y1), 2, max_samples))
        xs = np.clip(x1 + (np.arange(nx) + 0.5) * (x2 - x1) / nx - 0.5, 0, w - 1)
        ys = np.clip(y1 + (np.arange(ny) + 0.5) * (y2 - y1) / ny - 0.5, 0, h - 1)
        gx, gy = np.meshgrid(xs, ys)
        x0, y0 = np.floor(gx).astype(int), np.floor(gy).astype(int)
        x1i, y1i = np.minimum(x0 + 1, w - 1), np.minimum(y0 + 1, h - 1)
        fx, fy = (gx - x0).reshape(-1, 1), (gy - y0).reshape(-1, 1)
        v = (
            cells[(y0 * w + x0).ravel()] * ((1 - fx) * (1 - fy))
            + cells[(y0 * w + x1i).ravel()] * (fx * (1 - fy))
            + cells[(y1i * w + x0).ravel()] * ((1 - fx) * fy)
            + cells[(y1i * w + x1i).ravel()] * (fx * fy)
        )
        out[i] = v.max(0)
    return out


def region_descriptors(maps: FeatureMaps, boxes: np.ndarray, use_s16: bool = True) -> np.ndarray:
    """Raw (unwhitened) descriptor per box [N, 4] in photo pixels: max-pooled s32 (+ s16) features."""
    scaled = np.asarray(boxes, np.float64) * np.array([maps.scale_x, maps.scale_y, maps.scale_x, maps.scale_y])
    parts = [roi_align_max(maps.s32, scaled, 32.0)]
    if use_s16:
        parts.append(roi_align_max(maps.s16, scaled, 16.0))
    return np.concatenate([_l2(p) for p in parts], 1)


def _l2(x: np.ndarray) -> np.ndarray:
    return (x / np.maximum(np.linalg.norm(x, axis=1, keepdims=True), 1e-12)).astype(np.float32)


@dataclass(frozen=True)
class Whitening:
    """PCA whitening learned on training photos: y = l2((l2(x) - mean) @ proj)."""

    mean: np.ndarray
    proj: np.ndarray  # [D_in, D_out], eigenvectors / sqrt(eigenvalue + eps)

    @property
    def dim(self) -> int:
        return int(self.proj.shape[1])

    def apply(self, x: np.ndarray) -> np.ndarray:
        # numpy's own loop, not BLAS: a BLAS product's rounding depends on how many threads it splits the work
        # over (set by whoever imported numpy first), and the same photo must give the same stored bytes in
        # `oesir index`, in a library user's process and on a worker (~0.5 ms per photo more)
        return _l2(np.einsum("nd,de->ne", _l2(x) - self.mean, self.proj, optimize=False))

    def save(self, path: Path) -> None:
        np.savez(path, mean=self.mean.astype(np.float32), proj=self.proj.astype(np.float32))

    @classmethod
    def load(cls, path: Path) -> Whitening:
        with np.load(path) as z:
            return cls(z["mean"], z["proj"])


def learn_whitening(descriptors: np.ndarray, dim: int, shrink: float = 0.1) -> Whitening:
    """PCA whitening with eigenvalue shrinkage (eigenvalue + shrink * mean eigenvalue)."""
    x = _l2(descriptors).astype(np.float64)
    mean = x.mean(0)
    cov = np.cov((x - mean).T)
    vals, vecs = np.linalg.eigh(cov)
    order = np.argsort(vals)[::-1][:dim]
    vals, vecs = vals[order], vecs[:, order]
    proj = vecs / np.sqrt(vals + shrink * vals.mean())
    return Whitening(mean.astype(np.float32), proj.astype(np.float32))
