"""The teacher (the paper's M_f): ImageNet EfficientNet-Lite feature maps via onnxruntime."""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .registry import DEFAULT_TEACHER, Model, load_model


@dataclass(frozen=True)
class FeatureMaps:
    """Teacher maps for one photo, CHW float32, and the scale from photo pixels to map cells."""

    s16: np.ndarray
    s32: np.ndarray
    scale_x: float  # input pixels per photo pixel (horizontal)
    scale_y: float


def input_size(width: int, height: int, long_side: int) -> tuple[int, int]:
    """Resize target (w, h): longer side ~long_side, both multiples of 32, at least 32."""
    s = long_side / max(width, height)
    return max(32, int(round(width * s / 32)) * 32), max(32, int(round(height * s / 32)) * 32)


def preprocess(rgb: np.ndarray, long_side: int) -> tuple[np.ndarray, float, float]:
    """RGB uint8 -> [1, 3, H, W] float32 0..255 (the graph normalises), plus x/y scales."""
    h, w = rgb.shape[:2]
    tw, th = input_size(w, h, long_side)
    resized = cv2.resize(rgb, (tw, th), interpolation=cv2.INTER_AREA if tw < w else cv2.INTER_LINEAR)
    return resized.astype(np.float32).transpose(2, 0, 1)[None].copy(), tw / w, th / h


class Teacher:
    """Runs the teacher ONNX at a fixed working resolution."""

    def __init__(self, name: str = DEFAULT_TEACHER, long_side: int = 512, model: Model | None = None):
        self.model = model or load_model(name)
        self.long_side = long_side

    @property
    def version(self) -> str:
        return f"{self.model.version}/{self.long_side}"

    def features(self, rgb: np.ndarray) -> FeatureMaps:
        """Stride-16 and stride-32 maps of one photo."""
        x, sx, sy = preprocess(rgb, self.long_side)
        s16, s32 = self.model.session.run(["s16", "features"], {"image": x})
        return FeatureMaps(s16[0], s32[0], sx, sy)
