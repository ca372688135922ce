"""The detect/embed engine: one photo in, its objects, embeddings and local features out.

This is the paper's pipeline for one photo (detector boxes + the whole image,
ROIAlign on the teacher's maps, PCA whitening) plus RootSIFT local features for
the verification stage. Its `version` names everything that changes the stored
vectors, so an index built with other settings is refused.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from .codec import PQ_SUBSPACES
from .detector import Detections, Detector
from .embed import Whitening, region_descriptors
from .local import extract
from .registry import DEFAULT_TEACHER, verified_file
from .single_pass import STUDENT_VIEW, SinglePass
from .store import PhotoData
from .teacher import FeatureMaps, Teacher

MODELS = ("teacher", "student")
REGION_SIDE = 320  # a query region is re-embedded at this longer side (the teacher's view of a small object)
REGION_MARGIN = 0.1  # context added around a region on each side, as a share of its size


@dataclass(frozen=True)
class EngineConfig:
    """Settings that change what is stored for a photo."""

    teacher: str = DEFAULT_TEACHER
    long_side: int = 512
    max_objects: int = 8
    min_score: float = 0.05
    local_keypoints: int = 1000  # 0: no local features (an objects-only index, `--no-local`)
    model: str = "teacher"  # "teacher": detector then teacher (two passes); "student": the single-pass network

    def as_dict(self) -> dict:
        return asdict(self)

    def features_name(self) -> str:
        if self.model == "student":
            return f"the distilled student S3 at {STUDENT_VIEW}x{STUDENT_VIEW}"
        return f"{self.teacher} at {self.long_side}px"

    def whitening_file(self) -> str:
        if self.model == "student":
            return f"whitening_student_s3_{STUDENT_VIEW}.npz"
        return f"whitening_{self.teacher.replace('efficientnet-', '')}_{self.long_side}.npz"

    def codebook_file(self) -> str:
        """The PQ codebook learned on this configuration's whitened embeddings (`oesir weights pq`)."""
        return self.whitening_file().replace("whitening_", "pq_").replace(".npz", f"_m{PQ_SUBSPACES}.npz")


class Engine:
    """Loads the models once; `describe` turns a photo into what the index stores."""

    def __init__(self, config: EngineConfig | None = None):
        self.config = config or EngineConfig()
        if self.config.model not in MODELS:
            raise ValueError(f"unknown model {self.config.model!r} (teacher, student)")
        if self.config.model == "student":
            self.net: SinglePass | None = SinglePass()
        else:
            self.net = None
            self.detector = Detector()
            self.teacher = Teacher(self.config.teacher, self.config.long_side)
            self.region_teacher = Teacher(self.config.teacher, REGION_SIDE, model=self.teacher.model)  # same session
        path, digest = verified_file(self.config.whitening_file())
        self.whitening = Whitening.load(path)
        self._whitening_sha = digest[:12]

    @property
    def embedding_dim(self) -> int:
        return self.whitening.dim

    @property
    def version(self) -> str:
        c = self.config
        nets = self.net.version if self.net else f"{self.detector.model.version}+{self.teacher.version}"
        return f"{nets}+{c.whitening_file()}@{self._whitening_sha}/k{c.max_objects}/s{c.min_score}/sift{c.local_keypoints}"

    def raw_objects(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Boxes (whole image first, then up to k class-agnostic detections), scores, classes and
        unwhitened descriptors: one call of the single-pass graph, or the detector then the teacher."""
        c = self.config
        if self.net:
            o = self.net.objects(rgb, c.min_score, c.max_objects)
            return o.boxes, o.scores, o.classes, o.descriptors
        boxes, scores, classes = self.boxes(rgb)
        return boxes, scores, classes, region_descriptors(self.teacher.features(rgb), boxes)

    def boxes(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The whole-image box first, then up to k detector boxes (class-agnostic NMS)."""
        if self.net:
            return self.raw_objects(rgb)[:3]
        c = self.config
        return _whole_first(rgb, self.detector.detect(rgb, min_score=c.min_score, limit=c.max_objects, class_agnostic=True))

    def embed(self, rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Whitened, L2-normalised embedding per box (any boxes of this photo)."""
        return self._embed_maps(self.net.maps(rgb) if self.net else self.teacher.features(rgb), boxes)

    def objects(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Boxes and their embeddings, each network run once."""
        boxes, _, _, descriptors = self.raw_objects(rgb)
        return boxes, self.whitening.apply(descriptors)

    def region_embeddings(self, rgb: np.ndarray, box: np.ndarray) -> np.ndarray:
        """Embeddings [2, D] of one region of a photo seen on its own, as is and mirrored.

        A pasted object covers a few cells of the photo's feature map; cropped
        and enlarged it is described as its source photo's object was, and the
        mirrored view matches a source the splicer flipped.
        """
        crop = crop_region(rgb, box, REGION_MARGIN)
        out = []
        for view in (crop, np.ascontiguousarray(crop[:, ::-1])):
            if self.net:  # the whole view is the graph's first box: no detections needed
                out.append(self.whitening.apply(self.net.objects(view, 1.0, 0).descriptors[:1]))
            else:
                whole = np.array([[0, 0, view.shape[1], view.shape[0]]], np.float32)
                out.append(self._embed_maps(self.region_teacher.features(view), whole))
        return np.concatenate(out)

    def _embed_maps(self, maps: FeatureMaps, boxes: np.ndarray) -> np.ndarray:
        return self.whitening.apply(region_descriptors(maps, boxes))

    def describe(self, rgb: np.ndarray) -> PhotoData:
        boxes, scores, classes, descriptors = self.raw_objects(rgb)
        emb = self.whitening.apply(descriptors)
        if self.config.local_keypoints == 0:
            return PhotoData(boxes, scores, classes, emb, np.zeros((0, 4), np.float32), np.zeros((0, 128), np.uint8))
        local = extract(rgb, self.config.local_keypoints)
        return PhotoData(boxes, scores, classes, emb, local.keypoints, local.descriptors)

    @staticmethod
    def region_describer(config: EngineConfig, weights: Path | None = None) -> Callable[[np.ndarray], np.ndarray]:
        """Unwhitened descriptors of the whole photo + up to 30 detections (score >= 0.02): what whitening learns from."""
        if config.model == "student":
            net = SinglePass(directory=weights)
            return lambda rgb: net.objects(rgb, 0.02, 30).descriptors
        detector, teacher = Detector(), Teacher(config.teacher, config.long_side)
        return lambda rgb: _with_whole(
            rgb, detector.detect(rgb, min_score=0.02, limit=30, class_agnostic=True).boxes, teacher.features(rgb)
        )


def crop_region(rgb: np.ndarray, box: np.ndarray, margin: float) -> np.ndarray:
    """The pixels of box [x1, y1, x2, y2] widened by `margin` x its size on each side, clipped to the photo."""
    h, w = rgb.shape[:2]
    x1, y1, x2, y2 = (float(v) for v in box)
    mx, my = margin * (x2 - x1), margin * (y2 - y1)
    c0, r0 = int(max(0, x1 - mx)), int(max(0, y1 - my))
    c1, r1 = int(min(w, np.ceil(x2 + mx))), int(min(h, np.ceil(y2 + my)))
    return np.ascontiguousarray(rgb[r0 : max(r1, r0 + 1), c0 : max(c1, c0 + 1)])


def _whole_first(rgb: np.ndarray, det: Detections) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    h, w = rgb.shape[:2]
    boxes = np.concatenate([np.array([[0, 0, w, h]], np.float32), det.boxes]).astype(np.float32)
    scores = np.concatenate([[1.0], det.scores]).astype(np.float32)
    classes = np.concatenate([[0], det.classes]).astype(np.int64)
    return boxes, scores, classes


def _with_whole(rgb: np.ndarray, boxes: np.ndarray, maps: FeatureMaps) -> np.ndarray:
    h, w = rgb.shape[:2]
    return region_descriptors(maps, np.concatenate([np.array([[0, 0, w, h]], np.float32), boxes]))
