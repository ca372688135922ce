"""The detect/embed engine: one photo in, its objects, embeddings and local features out.

This is the paper's pipeline for one photo (detector boxes + the whole image,
ROIAlign on the teacher's maps, PCA whitening) plus RootSIFT local features for
the verification stage. Its `version` names everything that changes the stored
vectors, so an index built with other settings is refused.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import numpy as np

from .detector import Detector
from .embed import Whitening, region_descriptors
from .local import extract
from .registry import DEFAULT_TEACHER, verified_file
from .store import PhotoData
from .teacher import Teacher


@dataclass(frozen=True)
class EngineConfig:
    """Settings that change what is stored for a photo."""

    teacher: str = DEFAULT_TEACHER
    long_side: int = 512
    max_objects: int = 8
    min_score: float = 0.05
    local_keypoints: int = 1000

    def as_dict(self) -> dict:
        return asdict(self)

    def whitening_file(self) -> str:
        return f"whitening_{self.teacher.replace('efficientnet-', '')}_{self.long_side}.npz"


class Engine:
    """Loads the models once; `describe` turns a photo into what the index stores."""

    def __init__(self, config: EngineConfig | None = None):
        self.config = config or EngineConfig()
        self.detector = Detector()
        self.teacher = Teacher(self.config.teacher, self.config.long_side)
        path, digest = verified_file(self.config.whitening_file())
        self.whitening = Whitening.load(path)
        self._whitening_sha = digest[:12]

    @property
    def embedding_dim(self) -> int:
        return self.whitening.dim

    @property
    def version(self) -> str:
        c = self.config
        return (
            f"{self.detector.model.version}+{self.teacher.version}+{c.whitening_file()}@{self._whitening_sha}"
            f"/k{c.max_objects}/s{c.min_score}/sift{c.local_keypoints}"
        )

    def boxes(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The whole-image box first, then up to k detector boxes (class-agnostic NMS)."""
        h, w = rgb.shape[:2]
        det = self.detector.detect(rgb, min_score=self.config.min_score, limit=self.config.max_objects, class_agnostic=True)
        boxes = np.concatenate([np.array([[0, 0, w, h]], np.float32), det.boxes]).astype(np.float32)
        scores = np.concatenate([[1.0], det.scores]).astype(np.float32)
        classes = np.concatenate([[0], det.classes]).astype(np.int64)
        return boxes, scores, classes

    def embed(self, rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Whitened, L2-normalised embedding per box."""
        return self.whitening.apply(region_descriptors(self.teacher.features(rgb), boxes))

    def describe(self, rgb: np.ndarray) -> PhotoData:
        boxes, scores, classes = self.boxes(rgb)
        local = extract(rgb, self.config.local_keypoints)
        return PhotoData(boxes, scores, classes, self.embed(rgb, boxes), local.keypoints, local.descriptors)
