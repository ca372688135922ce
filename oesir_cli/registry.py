"""The one place that knows every model: file, input, outputs, provenance, loading.

Shaped like open_clip's `pretrained.py` + `factory.py`: `MODEL_SPECS` holds one
`ModelSpec` record per model (what the code needs besides its bytes: how a photo
becomes its input, the outputs read from it, the shapes of the maps other models
consume), and `open_model` verifies and opens one. Preprocessing code reads these
records, so an input rule or an output name is written here and nowhere else.

Model files live in the package's `weights/` folder (`oesir_cli/weights/`, so
`pip install` ships them) or in `$OESIR_WEIGHTS`, and are described by its
`manifest.json`. Loading checks the file's sha256 against the manifest, so a
missing or altered weights file is a clear one-line error, never a silently
different model.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass, replace
from functools import lru_cache
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import onnxruntime as ort

from .codec import PQ_SUBSPACES
from .errors import OesirError


class WeightsError(OesirError, RuntimeError):
    """A weights file is missing, altered or not in the manifest."""


INTERPOLATION = {"bilinear": cv2.INTER_LINEAR, "area": cv2.INTER_AREA}


@dataclass(frozen=True)
class InputSpec:
    """How an RGB uint8 photo becomes a model's image input."""

    fit: str  # "square": both sides to `side`, aspect ratio not kept; "long-side": longer side to about `side`
    side: int  # the square's side, or the default longer side
    layout: str  # "NHWC" | "NCHW"
    normalisation: str  # what the graph itself does to the values it is fed
    multiple: int = 1  # "long-side": both sides rounded to multiples of this, at least one multiple
    shrink: str = "bilinear"  # interpolation (a key of INTERPOLATION) when the photo gets narrower
    enlarge: str = "bilinear"  # interpolation otherwise
    dtype: str = "float32"  # values stay 0..255 RGB: the graph normalises

    def size(self, width: int, height: int, side: int | None = None) -> tuple[int, int]:
        """Resize target (w, h) of a `width` x `height` photo; `side` replaces the record's."""
        side = side or self.side
        if self.fit == "square":
            return side, side
        s = side / max(width, height)
        m = self.multiple
        return max(m, int(round(width * s / m)) * m), max(m, int(round(height * s / m)) * m)

    def interpolation(self, width: int, target_width: int) -> int:
        """The OpenCV interpolation flag for resizing a photo `width` wide to `target_width`."""
        return INTERPOLATION[self.shrink if target_width < width else self.enlarge]

    def resize(self, rgb: np.ndarray, side: int | None = None) -> np.ndarray:
        """The photo resized as the model expects (still uint8 HxWx3)."""
        h, w = rgb.shape[:2]
        tw, th = self.size(w, h, side)
        return cv2.resize(rgb, (tw, th), interpolation=self.interpolation(w, tw))

    def tensor(self, resized: np.ndarray) -> np.ndarray:
        """A resized photo as the graph's input: a batch of one, in the record's layout and dtype."""
        x = resized.astype(self.dtype)
        if self.layout == "NCHW":
            x = x.transpose(2, 0, 1)
        return np.ascontiguousarray(x[None])

    def describe(self) -> dict[str, str]:
        """The rule in words: the manifest's `preprocessing` entry (`python -m oesir_cli.convert`)."""
        if self.fit == "square":
            resize = f"to {self.side}x{self.side}, {self.enlarge}, aspect ratio not kept (as trained: fixed_shape_resizer)"
        else:
            resize = (
                f"longer side to the configured size (default {self.side}), both sides rounded to multiples of {self.multiple}"
            )
        layout = f"{self.layout} {self.dtype} 0..255"
        return {"colour": "RGB", "layout": layout, "resize": resize, "normalisation": self.normalisation}


@dataclass(frozen=True)
class MapSpec:
    """A named feature map a graph outputs: what other models read, or what ROIAlign pools."""

    name: str
    stride: int  # input pixels per map cell
    shape: tuple[int, ...] | None = None  # without the batch axis, in the graph's layout; None where it follows the input


@dataclass(frozen=True)
class ModelSpec:
    """What the code needs to know about a model besides its bytes."""

    name: str
    file: str
    role: str  # "detector" | "teacher" | "student" | "single-pass"
    note: str
    inputs: tuple[str, ...]  # graph input names, in the order the graph takes them
    outputs: tuple[str, ...]  # the outputs its main call fetches, in order
    image: InputSpec | None = None  # how a photo becomes its `image` input; None: it reads other tensors only
    maps: tuple[MapSpec, ...] = ()  # its feature maps (for the teacher and the student: stride 16, then stride 32)
    view: int | None = None  # its maps are the teacher's for a square view of this side (student, single pass)
    tag: str = ""  # its part of learned file names (`learned_file`), for models whose descriptors are whitened
    shares: tuple[str, ...] = ()  # weights files whose tensors this graph reads (ONNX external data, same folder)
    quantised_from: str = ""  # an int8 copy: the float model it was quantised from (`oesir_cli.convert.quantize`)

    def photo_input(self) -> InputSpec:
        """How a photo becomes its image input; ValueError for a model that reads no photo."""
        if self.image is None:
            raise ValueError(f"{self.name} reads the detector's maps, not a photo")
        return self.image

    def map_names(self) -> tuple[str, ...]:
        return tuple(m.name for m in self.maps)

    def map_spec(self, name: str) -> MapSpec:
        return next(m for m in self.maps if m.name == name)


DEFAULT_DETECTOR = "ssd-mobilenet-v2-coco"  # the float networks: what the int8 copies, the students and localize start from
DEFAULT_TEACHER = "efficientnet-lite0"
DEFAULT_STUDENT = "s3"
STUDENT_VARIANTS = ("s1", "s2", "s3")
SINGLE_PASS_VARIANTS = ("s2", "s3")  # S1 reads the photo, not the detector: it has no single pass
# The side of a view of part of a photo: the student reproduces the teacher's maps of a VIEW_SIDE x
# VIEW_SIDE view (it is trained on crops of that side), and the teacher re-describes a query region
# at this longer side.
VIEW_SIDE = 320

DETECTOR_INPUT = InputSpec(
    fit="square",
    side=300,
    layout="NHWC",
    normalisation="inside the graph: x * 2/255 - 1",
    shrink="bilinear",  # as trained: the TF Object Detection API's fixed_shape_resizer
    enlarge="bilinear",
)
TEACHER_INPUT = InputSpec(
    fit="long-side",
    side=512,
    layout="NCHW",
    normalisation="inside the graph: (x - 127) / 128 (TF-Lite EfficientNet-Lite scaling)",
    multiple=32,  # the exported graph's "same" padding is exact only for multiples of 32
    shrink="area",
    enlarge="bilinear",
)
# One box-encoding and one class-logit head per SSD feature map (detector.GRID), then the backbone maps.
DETECTOR_HEADS = tuple(f"{kind}_{i}" for i in range(6) for kind in ("box", "cls"))
DETECTOR_MAPS = (
    MapSpec("F2", 8, (38, 38, 192)),  # NHWC, for the 300x300 input
    MapSpec("F3", 16, (19, 19, 576)),
    MapSpec("F4", 32, (10, 10, 1280)),
)
TEACHER_MAPS = (MapSpec("s16", 16), MapSpec("features", 32))
# The student's maps: EfficientNet-Lite0's stride-16 (112 channels) and stride-32 (1280) maps of a VIEW_SIDE view.
STUDENT_MAPS = (
    MapSpec("student_s16", 16, (112, VIEW_SIDE // 16, VIEW_SIDE // 16)),
    MapSpec("student_s32", 32, (1280, VIEW_SIDE // 32, VIEW_SIDE // 32)),
)
OBJECT_OUTPUTS = ("boxes", "scores", "classes", "descriptors")  # the single-pass graph's per-photo result
STUDENT_INPUTS = {"s1": ("image",), "s2": ("F2",), "s3": ("F2", "F3", "F4")}  # S1 reads the detector's image


def student_name(variant: str) -> str:
    """Registry name of the distilled student `variant` alone."""
    return f"student-{variant}"


def single_pass_name(variant: str) -> str:
    """Registry name of the single-pass graph built on student `variant`."""
    return f"single-pass-{variant}"


DETECTOR_SPEC = ModelSpec(
    DEFAULT_DETECTOR,
    "ssd_mobilenet_v2_coco.onnx",
    "detector",
    "COCO SSD-MobileNetV2, 300x300, heads + F2/F3/F4",
    inputs=("image",),
    outputs=(*DETECTOR_HEADS, *(m.name for m in DETECTOR_MAPS)),
    image=DETECTOR_INPUT,
    maps=DETECTOR_MAPS,
)
TEACHER_SPECS = tuple(
    ModelSpec(
        f"efficientnet-{lite}",
        f"efficientnet_{lite}_teacher.onnx",
        "teacher",
        f"ImageNet EfficientNet-{lite.capitalize()}, dynamic H/W (multiples of 32)",
        inputs=("image",),
        outputs=tuple(m.name for m in TEACHER_MAPS),
        image=TEACHER_INPUT,
        maps=TEACHER_MAPS,
        tag=lite,
    )
    for lite in ("lite0", "lite2")
)
STUDENT_SPECS = {
    v: ModelSpec(
        student_name(v),
        f"student_{v}.onnx",
        "student",
        f"distilled student {v.upper()} on the detector's maps (oesir distill)",
        inputs=STUDENT_INPUTS[v],
        outputs=tuple(m.name for m in STUDENT_MAPS),
        image=DETECTOR_INPUT if "image" in STUDENT_INPUTS[v] else None,
        maps=STUDENT_MAPS,
        view=VIEW_SIDE,
    )
    for v in STUDENT_VARIANTS
}
SINGLE_PASS_SPECS = {
    v: ModelSpec(
        single_pass_name(v),
        f"single_pass_{v}.onnx",
        "single-pass",
        f"detector + student {v.upper()} + NMS + ROIAlign in one graph (oesir distill)",
        inputs=("image", "max_objects", "min_score"),
        outputs=OBJECT_OUTPUTS,
        image=DETECTOR_SPEC.image,
        maps=STUDENT_SPECS[v].maps,
        view=STUDENT_SPECS[v].view,
        tag=f"student_{v}",
        shares=(DETECTOR_SPEC.file, STUDENT_SPECS[v].file),
    )
    for v in SINGLE_PASS_VARIANTS
}

# Int8 copies of the detector and of the teacher the index uses by default: the same inputs, outputs and learned files
# (a quantised network's descriptors are its float source's within int8 rounding: whitened object descriptors at
# cosine 0.99, bench/RESULTS.md "Session 20"), ~2.5x faster on CPUs with int8 dot products.
INT8_DETECTOR = "ssd-mobilenet-v2-coco-int8"
INT8_TEACHER = "efficientnet-lite0-int8"
QUANTISED_SPECS = (
    replace(
        DETECTOR_SPEC,
        name=INT8_DETECTOR,
        file="ssd_mobilenet_v2_coco_int8.onnx",
        note="the COCO SSD-MobileNetV2 quantised to int8 (static, per-channel weights)",
        quantised_from=DEFAULT_DETECTOR,
    ),
    replace(
        next(s for s in TEACHER_SPECS if s.name == DEFAULT_TEACHER),
        name=INT8_TEACHER,
        file="efficientnet_lite0_int8_teacher.onnx",
        note="ImageNet EfficientNet-Lite0 quantised to int8 (static, per-channel weights), dynamic H/W",
        quantised_from=DEFAULT_TEACHER,
    ),
)
MODEL_SPECS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (DETECTOR_SPEC, *TEACHER_SPECS, *QUANTISED_SPECS, *STUDENT_SPECS.values(), *SINGLE_PASS_SPECS.values())
}


def model_spec(name: str, role: str | None = None) -> ModelSpec:
    """The record of model `name`; WeightsError when unknown, ValueError when it is not a `role`."""
    if name not in MODEL_SPECS:
        raise WeightsError(f"unknown model {name!r}; known: {', '.join(MODEL_SPECS)}")
    spec = MODEL_SPECS[name]
    if role is not None and spec.role != role:
        known = ", ".join(n for n, s in MODEL_SPECS.items() if s.role == role)
        raise ValueError(f"{name} is a {spec.role}, not a {role}; {role}s: {known}")
    return spec


def learned_file(kind: str, spec: ModelSpec, side: int) -> str:
    """File name of what is learned on the region descriptors of `spec` at `side`:
    kind "whitening" (the PCA whitening) or "pq" (the PQ codebook of the whitened embeddings)."""
    if not spec.tag:
        raise ValueError(f"nothing is learned on the descriptors of {spec.name}")
    if kind == "whitening":
        return f"whitening_{spec.tag}_{side}.npz"
    if kind == "pq":
        return f"pq_{spec.tag}_{side}_m{PQ_SUBSPACES}.npz"
    raise ValueError(f"unknown learned file kind {kind!r} (whitening, pq)")


PACKAGE_WEIGHTS = Path(__file__).resolve().parent / "weights"  # package data: installed with the code


def weights_dir() -> Path:
    """`$OESIR_WEIGHTS`, else the `weights/` folder inside the package."""
    env = os.environ.get("OESIR_WEIGHTS")
    return Path(env) if env else PACKAGE_WEIGHTS


def _where(directory: Path) -> str:
    """Why oesir looked in `directory` and how to point it elsewhere: the tail of a weights-not-found error."""
    env = os.environ.get("OESIR_WEIGHTS")
    if env and Path(env) == directory:
        return "(the folder $OESIR_WEIGHTS names; point it at a folder holding manifest.json and the model files, or unset it)"
    if directory == PACKAGE_WEIGHTS:
        return "(the weights installed with oesir; reinstall oesir, or set $OESIR_WEIGHTS to a folder holding them)"
    return "(a weights folder holds manifest.json and the model files; $OESIR_WEIGHTS sets the default one)"


def read_manifest(directory: Path | None = None) -> dict[str, Any]:
    """The parsed `manifest.json` of the weights folder."""
    directory = Path(directory) if directory else weights_dir()
    path = directory / "manifest.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise WeightsError(f"weights manifest not found: {path} {_where(directory)}") from None
    except json.JSONDecodeError as exc:
        raise WeightsError(f"weights manifest is not valid JSON: {path}: {exc}") from None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


_VERIFIED: dict[Path, str] = {}  # every weights file this process checked and used, with its sha256


def verified_file(file_name: str, directory: Path | None = None) -> tuple[Path, str]:
    """Path and sha256 of a weights file, after checking it is listed, present and unaltered."""
    directory = directory or weights_dir()
    entry = read_manifest(directory).get("files", {}).get(file_name)
    path = directory / file_name
    if entry is None:
        raise WeightsError(f"weights file {path} is not listed in {directory / 'manifest.json'}")
    if not path.is_file():
        raise WeightsError(f"weights file missing: {path} {_where(directory)}")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise WeightsError(f"weights file altered: {path} (sha256 {digest[:12]}..., manifest says {entry['sha256'][:12]}...)")
    _VERIFIED[path] = digest
    return path, digest


def files_used() -> dict[Path, str]:
    """The weights files this process has loaded so far, each with the sha256 it had when checked.

    A report lists exactly these: the models that produced its results, not
    every file the manifest happens to hold.
    """
    return dict(sorted(_VERIFIED.items()))


def verified_path(name: str, directory: Path | None = None) -> Path:
    """Path of model `name` after checking it exists and matches the manifest's sha256."""
    return verified_file(model_spec(name).file, directory)[0]


def add_manifest_entry(path: Path, entry: dict[str, Any]) -> dict[str, Any]:
    """List the file at `path` in its folder's manifest (sha256 and size added), written atomically."""
    directory = path.parent
    try:
        manifest = read_manifest(directory)
    except WeightsError:
        manifest = {"format": 1, "files": {}}
    full = {**entry, "sha256": sha256_file(path), "bytes": path.stat().st_size}
    manifest["files"][path.name] = full
    manifest["files"] = dict(sorted(manifest["files"].items()))
    tmp = directory / f".manifest.json.{os.getpid()}.tmp"
    tmp.write_text(json.dumps(manifest, indent=2) + "\n")
    os.replace(tmp, directory / "manifest.json")
    return full


@dataclass(frozen=True)
class Model:
    """A loaded model: its spec, manifest entry and onnxruntime session."""

    spec: ModelSpec
    entry: dict[str, Any]
    session: ort.InferenceSession
    shared_sha256: tuple[str, ...] = ()  # of `spec.shares`, the files whose tensors the graph reads

    @property
    def version(self) -> str:
        """Short content hash(es): indexes record it and refuse other versions."""
        shared = "".join(f"+{f}@{h[:12]}" for f, h in zip(self.spec.shares, self.shared_sha256))
        return f"{self.spec.name}@{self.entry['sha256'][:12]}{shared}"

    @property
    def replaced_versions(self) -> tuple[str, ...]:
        """`version` as the files this one replaces computed it: the manifest's `replaces`, earlier graphs of the
        same network whose outputs differ by float rounding only, so what they indexed stays valid."""
        mine = f"{self.spec.name}@{self.entry['sha256'][:12]}"
        return tuple(self.version.replace(mine, f"{self.spec.name}@{r['sha256'][:12]}") for r in self.entry.get("replaces", []))


def session_options(threads: int | None = None) -> ort.SessionOptions:
    """onnxruntime options: full graph optimisation, `threads` intra-op threads that do not spin."""
    opts = ort.SessionOptions()
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    opts.intra_op_num_threads = threads or int(os.environ.get("OESIR_THREADS", "0"))
    opts.inter_op_num_threads = 1
    opts.log_severity_level = 3
    # idle threads sleep instead of spinning: search runs hnswlib and OpenCV between network calls
    opts.add_session_config_entry("session.intra_op.allow_spinning", "0")
    return opts


@lru_cache(maxsize=8)
def load_model(name: str, directory: str | None = None) -> Model:
    """Load (once per process) and verify model `name`."""
    d = Path(directory) if directory else weights_dir()
    path = verified_path(name, d)
    spec = MODEL_SPECS[name]
    shared = tuple(verified_file(f, d)[1] for f in spec.shares)  # its external data, as the manifest vouches
    entry = read_manifest(d)["files"][spec.file]
    session = ort.InferenceSession(str(path), sess_options=session_options(), providers=["CPUExecutionProvider"])
    return Model(spec, entry, session, shared)


def open_model(name: str, role: str | None = None, directory: Path | None = None) -> Model:
    """Model `name` (checked to be a `role`) from `directory` (default: `weights_dir()`), loaded once per process."""
    model_spec(name, role)
    # one cache key per folder: `load_model(name)` and `load_model(name, None)` would be two sessions
    return load_model(name, str(directory)) if directory else load_model(name)
