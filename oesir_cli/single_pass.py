"""The detector-student path (the paper's single pass): one onnxruntime call per photo.

`single_pass_s3.onnx` (made by `oesir distill`, see distill/export.py) is the detector,
the distilled student on the detector's own backbone maps F2/F3/F4, box decoding + NMS
and max-ROIAlign over the student's maps, in one graph: a photo in; its boxes (whole
photo first), scores, classes and one unwhitened descriptor per box out. The graph
reads its weights from `ssd_mobilenet_v2_coco.onnx` and `student_s3.onnx` in the same
folder (ONNX external data), so weights/ holds them once.

`SinglePass` is also one of the engine's two back ends (`engine.Backend`): its
`raw_objects`, `boxes`, `maps` and `whole_descriptor` are what the engine asks of
the detector and the teacher on the two-pass path.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort

from .registry import DEFAULT_STUDENT, Model, open_model, single_pass_name
from .teacher import FeatureMaps


@dataclass(frozen=True)
class Objects:
    """One photo through the single-pass graph: boxes in photo pixels, whole photo first."""

    boxes: np.ndarray  # [K+1, 4] float32
    scores: np.ndarray  # [K+1] float32 (1 for the whole photo)
    classes: np.ndarray  # [K+1] int64, COCO ids (0 for the whole photo)
    descriptors: np.ndarray  # [K+1, 1392] float32, unwhitened (`embed.region_descriptors` of the student's maps)


class SinglePass:
    """The single-pass network; `objects` is one onnxruntime call."""

    def __init__(self, name: str = single_pass_name(DEFAULT_STUDENT), model: Model | None = None, directory: Path | None = None):
        self.model = model or open_model(name, "single-pass", directory)
        self._maps_only = ort.RunOptions()
        self._maps_only.only_execute_path_to_fetches = True  # the maps need neither NMS nor ROIAlign

    @property
    def version(self) -> str:
        return self.model.version

    @property
    def models(self) -> tuple[Model, ...]:
        return (self.model,)

    def _feeds(self, rgb: np.ndarray, min_score: float, limit: int) -> dict[str, np.ndarray]:
        image = self.model.spec.photo_input()
        photo, max_objects, score = self.model.spec.inputs
        return {
            photo: image.tensor(image.resize(rgb)),
            max_objects: np.array([limit], np.int64),
            score: np.array([min_score], np.float32),
        }

    def objects(self, rgb: np.ndarray, min_score: float, limit: int) -> Objects:
        """Up to `limit` class-agnostic detections (score >= `min_score`) after the whole photo, with descriptors."""
        h, w = rgb.shape[:2]
        boxes, scores, classes, descriptors = self.model.session.run(
            list(self.model.spec.outputs), self._feeds(rgb, min_score, limit)
        )
        pixels = (boxes * np.array([w, h, w, h], np.float32)).astype(np.float32)
        return Objects(pixels, scores.astype(np.float32), classes.astype(np.int64), descriptors)

    def maps(self, rgb: np.ndarray) -> FeatureMaps:
        """The student's maps, for descriptors of boxes the graph did not choose."""
        h, w = rgb.shape[:2]
        view = self.model.spec.view
        s16, s32 = self.model.session.run(list(self.model.spec.map_names()), self._feeds(rgb, 1.0, 0), self._maps_only)
        return FeatureMaps(s16[0], s32[0], view / w, view / h)

    # -- as an engine back end -------------------------------------------------
    def raw_objects(self, rgb: np.ndarray, min_score: float, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Boxes (whole photo first), scores, classes and unwhitened descriptors, in one call."""
        o = self.objects(rgb, min_score, limit)
        return o.boxes, o.scores, o.classes, o.descriptors

    def boxes(self, rgb: np.ndarray, min_score: float, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Boxes (whole photo first), scores and classes."""
        return self.raw_objects(rgb, min_score, limit)[:3]

    def whole_descriptor(self, view: np.ndarray) -> np.ndarray:
        """Unwhitened descriptor [1, D] of the whole of `view`: the graph's first box, no detections needed."""
        return self.objects(view, 1.0, 0).descriptors[:1]
