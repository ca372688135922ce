"""The teacher (the paper's M_f): ImageNet EfficientNet-Lite feature maps via onnxruntime.

Its input rule (longer side, multiples of 32, interpolation) and output names are
those of its `registry.ModelSpec`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .registry import DEFAULT_TEACHER, MODEL_SPECS, InputSpec, Model, open_model


@dataclass(frozen=True)
class FeatureMaps:
    """Teacher maps for one photo, CHW float32, and the scale from photo pixels to map cells."""

    s16: np.ndarray
    s32: np.ndarray
    scale_x: float  # input pixels per photo pixel (horizontal)
    scale_y: float


def input_size(width: int, height: int, long_side: int, image: InputSpec | None = None) -> tuple[int, int]:
    """Resize target (w, h): longer side ~long_side, both sides multiples of 32 and at least 32 (`image`'s rule)."""
    return (image or MODEL_SPECS[DEFAULT_TEACHER].photo_input()).size(width, height, long_side)


def preprocess(rgb: np.ndarray, long_side: int, image: InputSpec | None = None) -> tuple[np.ndarray, float, float]:
    """RGB uint8 -> [1, 3, H, W] float32 0..255 (the graph normalises), plus x/y scales."""
    image = image or MODEL_SPECS[DEFAULT_TEACHER].photo_input()
    h, w = rgb.shape[:2]
    resized = image.resize(rgb, long_side)
    th, tw = resized.shape[:2]
    return image.tensor(resized), tw / w, th / h


class Teacher:
    """Runs the teacher ONNX at a fixed working resolution."""

    def __init__(
        self,
        name: str = DEFAULT_TEACHER,
        long_side: int | None = None,
        model: Model | None = None,
        directory: Path | None = None,
    ):
        self.model = model or open_model(name, "teacher", directory)
        self.image = self.model.spec.photo_input()
        self.long_side = self.image.side if long_side is None else long_side

    @property
    def version(self) -> str:
        return f"{self.model.version}/{self.long_side}"

    def features(self, rgb: np.ndarray) -> FeatureMaps:
        """Stride-16 and stride-32 maps of one photo."""
        x, sx, sy = preprocess(rgb, self.long_side, self.image)
        s16, s32 = self.model.session.run(list(self.model.spec.outputs), {self.model.spec.inputs[0]: x})
        return FeatureMaps(s16[0], s32[0], sx, sy)
