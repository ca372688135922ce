"""The detect/embed engine: one photo in, its objects, embeddings and local features out.

This is the paper's pipeline for one photo (detector boxes + the whole image,
ROIAlign on the teacher's maps, PCA whitening) plus RootSIFT local features for
the verification stage. Its `version` names everything that changes the stored
vectors, so an index built with other settings is refused.

Two back ends describe a photo's objects, chosen once from `EngineConfig.model`:
`TwoPass` (the detector, then the teacher on the whole photo) and
`single_pass.SinglePass` (the distilled student, one onnxruntime call). Both
provide what `Backend` lists; the engine adds whitening and local features.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from .choices import ModelKind, Precision, parse
from .detector import Detections, Detector
from .embed import Whitening, region_descriptors
from .keypoints import extract
from .registry import (
    DEFAULT_DETECTOR,
    DEFAULT_STUDENT,
    DEFAULT_TEACHER,
    INT8_DETECTOR,
    INT8_TEACHER,
    MODEL_SPECS,
    VIEW_SIDE,
    Model,
    ModelSpec,
    learned_file,
    model_spec,
    single_pass_name,
    verified_file,
)
from .single_pass import SinglePass
from .store import PhotoData
from .teacher import FeatureMaps, Teacher

MAX_OBJECTS = 8  # detections stored per photo (the paper's k), besides the whole photo
MIN_SCORE = 0.05  # the least detector score of a stored detection
REGION_MARGIN = 0.1  # context added around a region on each side, as a share of its size
_KEYPOINTS = ThreadPoolExecutor(max_workers=1)  # SIFT on the other core while the networks run (both release the GIL)


@dataclass(frozen=True)
class RegionRule:
    """Which regions of a photo are described: the whole photo, then up to `limit` class-agnostic
    detections scoring at least `min_score`."""

    min_score: float
    limit: int


# What the whitening and the PQ codebook are learned from (`oesir weights whiten` / `pq`).
TRAINING_REGIONS = RegionRule(min_score=0.02, limit=30)


@dataclass(frozen=True)
class EngineConfig:
    """Settings that change what is stored for a photo.

    An index stores `as_dict()` and re-reads it with `EngineConfig.stored`. A
    new index describes photos with the int8 detector and teacher; an index
    whose stored settings predate a field, or omit it, means what indexes were
    built with then (`STORED_DEFAULTS`: the float networks), so every index
    keeps its models and the bytes of its stored settings.
    """

    teacher: str = INT8_TEACHER
    long_side: int = MODEL_SPECS[DEFAULT_TEACHER].photo_input().side
    max_objects: int = MAX_OBJECTS
    min_score: float = MIN_SCORE
    local_keypoints: int = 1000  # 0: no local features (an objects-only index, `--no-local`)
    model: str = ModelKind.TEACHER.value  # teacher: detector then teacher (two passes); student: the single pass
    detector: str = INT8_DETECTOR  # the two-pass detector (the single pass contains its own, the float one)
    student: str = DEFAULT_STUDENT  # the student variant of the single pass

    @classmethod
    def new(
        cls, model: ModelKind | str = ModelKind.TEACHER, precision: Precision | str | None = None, **settings: Any
    ) -> EngineConfig:
        """A new index's configuration: the two-pass detector and teacher at `precision` (default int8); the single
        pass (`model` student) holds the float detector and computes in float only."""
        kind = ModelKind(parse(ModelKind, model, "model"))
        if kind is ModelKind.STUDENT:
            if precision is not None and parse(Precision, precision, "precision") is not Precision.FLOAT:
                raise ValueError("the single-pass student computes in float only: use --precision float or leave it out")
            detector, teacher = NETWORKS[Precision.FLOAT]
        else:
            detector, teacher = NETWORKS[Precision(parse(Precision, precision or Precision.INT8, "precision"))]
        return cls(teacher=teacher, detector=detector, model=kind.value, **settings)

    def precision(self) -> Precision:
        """int8 when the two-pass networks are the int8 copies, else float (the single pass is float)."""
        int8 = self.kind() is ModelKind.TEACHER and (self.detector, self.teacher) == NETWORKS[Precision.INT8]
        return Precision.INT8 if int8 else Precision.FLOAT

    @classmethod
    def stored(cls, settings: str | dict[str, Any] | None) -> EngineConfig:
        """The configuration an index stored (JSON text or its dict; None: an index that stored none)."""
        raw = json.loads(settings) if isinstance(settings, str) else dict(settings or {})
        return cls(**{**STORED_DEFAULTS, **raw})

    def as_dict(self) -> dict[str, Any]:
        """What an index stores: every field, except those in `OMITTED_WHEN_DEFAULT` at their `STORED_DEFAULTS`."""
        d = asdict(self)
        for name in OMITTED_WHEN_DEFAULT:
            if d[name] == STORED_DEFAULTS[name]:
                del d[name]
        return d

    def kind(self) -> ModelKind:
        """`model` as a ModelKind; ValueError naming the choices for anything else."""
        return ModelKind(parse(ModelKind, self.model, "model"))

    def describing_spec(self) -> ModelSpec:
        """The record of the network whose maps give the descriptors: the teacher, or the single-pass graph."""
        if self.kind() is ModelKind.STUDENT:
            return model_spec(single_pass_name(self.student), "single-pass")
        return model_spec(self.teacher, "teacher")

    def descriptor_side(self) -> int:
        """The side the descriptors are computed at: the teacher's longer side, or the student's square view."""
        spec = self.describing_spec()
        return self.long_side if spec.view is None else spec.view

    def features_name(self) -> str:
        if self.kind() is ModelKind.STUDENT:
            side = self.descriptor_side()
            return f"the distilled student {self.student.upper()} at {side}x{side}"
        return f"{self.teacher} at {self.long_side}px"

    def whitening_file(self) -> str:
        return learned_file("whitening", self.describing_spec(), self.descriptor_side())

    def codebook_file(self) -> str:
        """The PQ codebook learned on this configuration's whitened embeddings (`oesir weights pq`)."""
        return learned_file("pq", self.describing_spec(), self.descriptor_side())


# What an index's stored settings mean where they name no model: the models of the indexes made before
# these fields (or these defaults) existed. `detector` and `student` are stored only when they differ.
STORED_DEFAULTS = {"teacher": DEFAULT_TEACHER, "detector": DEFAULT_DETECTOR, "student": DEFAULT_STUDENT}
OMITTED_WHEN_DEFAULT = ("detector", "student")
# (detector, teacher) of the two-pass path at each precision
NETWORKS = {Precision.INT8: (INT8_DETECTOR, INT8_TEACHER), Precision.FLOAT: (DEFAULT_DETECTOR, DEFAULT_TEACHER)}


class Backend(Protocol):
    """What the engine asks of the networks that describe a photo's objects (descriptors unwhitened)."""

    @property
    def version(self) -> str: ...

    @property
    def models(self) -> tuple[Model, ...]: ...

    def raw_objects(
        self, rgb: np.ndarray, min_score: float, limit: int
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]: ...

    def boxes(self, rgb: np.ndarray, min_score: float, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]: ...

    def maps(self, rgb: np.ndarray) -> FeatureMaps: ...

    def whole_descriptor(self, view: np.ndarray) -> np.ndarray: ...


class TwoPass:
    """The detector's boxes, then ROIAlign on the teacher's maps of the whole photo."""

    def __init__(self, detector: Detector, teacher: Teacher):
        self.detector = detector
        self.teacher = teacher
        # a region seen on its own is described at the student's view side; same session, other input size
        self.region_teacher = Teacher(long_side=VIEW_SIDE, model=teacher.model)

    @property
    def version(self) -> str:
        return f"{self.detector.model.version}+{self.teacher.version}"

    @property
    def models(self) -> tuple[Model, ...]:
        return (self.detector.model, self.teacher.model)

    def boxes(self, rgb: np.ndarray, min_score: float, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The whole-image box first, then up to `limit` detector boxes (class-agnostic NMS)."""
        return _whole_first(rgb, self.detector.detect(rgb, min_score=min_score, limit=limit, class_agnostic=True))

    def raw_objects(self, rgb: np.ndarray, min_score: float, limit: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        boxes, scores, classes = self.boxes(rgb, min_score, limit)
        return boxes, scores, classes, region_descriptors(self.teacher.features(rgb), boxes)

    def maps(self, rgb: np.ndarray) -> FeatureMaps:
        return self.teacher.features(rgb)

    def whole_descriptor(self, view: np.ndarray) -> np.ndarray:
        whole = np.array([[0, 0, view.shape[1], view.shape[0]]], np.float32)
        return region_descriptors(self.region_teacher.features(view), whole)


def make_backend(config: EngineConfig, weights: Path | None = None) -> Backend:
    """The back end `config` names, its models loaded from `weights` (default: `registry.weights_dir()`)."""
    model_spec(config.detector, "detector")
    if config.kind() is ModelKind.STUDENT:
        net = SinglePass(config.describing_spec().name, directory=weights)
        if MODEL_SPECS[config.detector].file not in net.model.spec.shares:
            raise ValueError(f"{net.model.spec.name} contains its own detector, not {config.detector}")
        return net
    teacher = Teacher(config.teacher, config.long_side, directory=weights)
    return TwoPass(Detector(name=config.detector, directory=weights), teacher)


class Engine:
    """Loads the models once; `describe` turns a photo into what the index stores."""

    def __init__(self, config: EngineConfig | None = None, overlap_keypoints: bool = True):
        """`overlap_keypoints`: run SIFT on another thread while the networks run (a process alone on the
        machine); False runs them one after the other (one of several worker processes, one core each)."""
        self.config = config or EngineConfig()
        self.overlap_keypoints = overlap_keypoints
        self.backend = make_backend(self.config)
        path, digest = verified_file(self.config.whitening_file())
        self.whitening = Whitening.load(path)
        self._whitening_sha = digest[:12]

    @property
    def teacher(self) -> Teacher:
        """The two-pass path's teacher (AttributeError on the single pass)."""
        return self.backend.teacher  # type: ignore[attr-defined]

    @property
    def detector(self) -> Detector:
        """The two-pass path's detector (AttributeError on the single pass)."""
        return self.backend.detector  # type: ignore[attr-defined]

    @property
    def embedding_dim(self) -> int:
        return self.whitening.dim

    @property
    def version(self) -> str:
        nets, c = self.backend.version, self.config
        return f"{nets}+{c.whitening_file()}@{self._whitening_sha}/k{c.max_objects}/s{c.min_score}/sift{c.local_keypoints}"

    @property
    def equivalent_versions(self) -> frozenset[str]:
        """The versions an index carries that was written with files these models replace (`Model.replaced_versions`):
        its contents are what this engine would store, so it is used as is, not refused."""
        versions = {self.version}
        for model in self.backend.models:
            versions |= {v.replace(model.version, old) for v in versions for old in model.replaced_versions}
        return frozenset(versions - {self.version})

    def raw_objects(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Boxes (whole image first, then up to k class-agnostic detections), scores, classes and
        unwhitened descriptors: one call of the single-pass graph, or the detector then the teacher."""
        return self.backend.raw_objects(rgb, self.config.min_score, self.config.max_objects)

    def boxes(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """The whole-image box first, then up to k detector boxes (class-agnostic NMS)."""
        return self.backend.boxes(rgb, self.config.min_score, self.config.max_objects)

    def embed(self, rgb: np.ndarray, boxes: np.ndarray) -> np.ndarray:
        """Whitened, L2-normalised embedding per box (any boxes of this photo)."""
        return self.whitening.apply(region_descriptors(self.backend.maps(rgb), boxes))

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
        views = (crop, np.ascontiguousarray(crop[:, ::-1]))
        return np.concatenate([self.whitening.apply(self.backend.whole_descriptor(view)) for view in views])

    def describe(self, rgb: np.ndarray) -> PhotoData:
        """What the index stores for a photo: its objects, their embeddings, and its local features."""
        n = self.config.local_keypoints
        pending = _KEYPOINTS.submit(extract, rgb, n) if n and self.overlap_keypoints else None
        boxes, scores, classes, descriptors = self.raw_objects(rgb)
        emb = self.whitening.apply(descriptors)
        if not n:
            return PhotoData(boxes, scores, classes, emb, np.zeros((0, 4), np.float32), np.zeros((0, 128), np.uint8))
        local = pending.result() if pending is not None else extract(rgb, n)
        return PhotoData(boxes, scores, classes, emb, local.keypoints, local.descriptors)

    @staticmethod
    def region_describer(config: EngineConfig, weights: Path | None = None) -> Callable[[np.ndarray], np.ndarray]:
        """Unwhitened descriptors of a photo's `TRAINING_REGIONS`: what whitening and the PQ codebook learn from."""
        backend, rule = make_backend(config, weights), TRAINING_REGIONS
        return lambda rgb: backend.raw_objects(rgb, rule.min_score, rule.limit)[3]


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
