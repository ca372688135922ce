"""The detector-student path (the paper's single pass): one onnxruntime call per photo.

`single_pass_s3.onnx` (made by `oesir distill`, see distill/export.py) is the detector,
the distilled student on the detector's own backbone maps F2/F3/F4, box decoding + NMS
and max-ROIAlign over the student's maps, in one graph: a photo in; its boxes (whole
photo first), scores, classes and one unwhitened descriptor per box out. The graph
reads its weights from `ssd_mobilenet_v2_coco.onnx` and `student_s3.onnx` in the same
folder (ONNX external data), so weights/ holds them once.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .detector import preprocess
from .registry import Model, load_model
from .teacher import FeatureMaps

STUDENT_VIEW = 320  # the student's maps are the teacher's for this square input
OBJECT_OUTPUTS = ["boxes", "scores", "classes", "descriptors"]


@dataclass(frozen=True)
class Objects:
    """One photo through the single-pass graph: boxes in photo pixels, whole photo first."""

    boxes: np.ndarray  # [K+1, 4] float32
    scores: np.ndarray  # [K+1] float32 (1 for the whole photo)
    classes: np.ndarray  # [K+1] int64, COCO ids (0 for the whole photo)
    descriptors: np.ndarray  # [K+1, 1392] float32, unwhitened (`embed.region_descriptors` of the student's maps)


class SinglePass:
    """The single-pass network; `objects` is one onnxruntime call."""

    def __init__(self, name: str = "single-pass-s3", model: Model | None = None, directory: Path | None = None):
        self.model = model or load_model(name, str(directory) if directory else None)
        self._maps_only = ort.RunOptions()
        self._maps_only.only_execute_path_to_fetches = True  # the maps need neither NMS nor ROIAlign

    @property
    def version(self) -> str:
        return self.model.version

    def objects(self, rgb: np.ndarray, min_score: float, limit: int) -> Objects:
        """Up to `limit` class-agnostic detections (score >= `min_score`) after the whole photo, with descriptors."""
        h, w = rgb.shape[:2]
        feeds = {
            "image": preprocess(rgb),
            "max_objects": np.array([limit], np.int64),
            "min_score": np.array([min_score], np.float32),
        }
        boxes, scores, classes, descriptors = self.model.session.run(OBJECT_OUTPUTS, feeds)
        pixels = (boxes * np.array([w, h, w, h], np.float32)).astype(np.float32)
        return Objects(pixels, scores.astype(np.float32), classes.astype(np.int64), descriptors)

    def maps(self, rgb: np.ndarray) -> FeatureMaps:
        """The student's maps, for descriptors of boxes the graph did not choose."""
        h, w = rgb.shape[:2]
        feeds = {"image": preprocess(rgb), "max_objects": np.array([0], np.int64), "min_score": np.array([1.0], np.float32)}
        s16, s32 = self.model.session.run(["student_s16", "student_s32"], feeds, self._maps_only)
        return FeatureMaps(s16[0], s32[0], STUDENT_VIEW / w, STUDENT_VIEW / h)
