"""The detector-student path (the paper's single pass): one backbone pass gives boxes and feature maps.

The student (made by `oesir distill`) reads the detector's own backbone maps
F2/F3/F4 and returns its imitation of the teacher's stride-16 and stride-32
maps for a 320x320 view of the photo, so no second network looks at the photo.
The detector and the student run as two onnxruntime sessions chained in
memory; `oesir distill` also writes them merged into one graph (tested equal),
which is not shipped: with the detector inside it would be a second 67 MB copy
of the detector in weights/, and onnxruntime runs every node of a graph, so it
cannot stand in for the detector of the teacher path.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from .detector import Detections, Detector, postprocess, preprocess
from .registry import Model, load_model
from .teacher import FeatureMaps

STUDENT_VIEW = 320  # the student's maps are the teacher's for this square input


class SinglePass:
    """Detector + student; `run` returns detections and feature maps from one backbone pass."""

    def __init__(
        self,
        name: str = "student-s3",
        model: Model | None = None,
        directory: Path | None = None,
        detector: Detector | None = None,
    ):
        self.student = model or load_model(name, str(directory) if directory else None)
        self.detector = detector or Detector()
        self._inputs = [i.name for i in self.student.session.get_inputs()]

    @property
    def version(self) -> str:
        return f"{self.detector.model.version}+{self.student.version}"

    def outputs(self, rgb: np.ndarray) -> dict[str, np.ndarray]:
        """The detector's heads and maps plus `student_s16` and `student_s32`."""
        x = preprocess(rgb)
        det = self.detector.model.session
        out = dict(zip([o.name for o in det.get_outputs()], det.run(None, {"image": x})))
        feeds = {n: (x if n == "image" else out[n]) for n in self._inputs}
        s16, s32 = self.student.session.run(["student_s16", "student_s32"], feeds)
        return {**out, "student_s16": s16, "student_s32": s32}

    def run(self, rgb: np.ndarray, min_score: float, limit: int) -> tuple[Detections, FeatureMaps]:
        """Class-agnostic detections (photo pixels) and the student's maps for one photo."""
        h, w = rgb.shape[:2]
        out = self.outputs(rgb)
        det = postprocess(out, w, h, min_score=min_score, limit=limit, class_agnostic=True)
        maps = FeatureMaps(out["student_s16"][0], out["student_s32"][0], STUDENT_VIEW / w, STUDENT_VIEW / h)
        return det, maps
