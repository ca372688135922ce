"""The one place that knows every model: file, preprocessing, provenance, loading.

Model files live in `weights/` (or `$OESIR_WEIGHTS`) and are described by
`weights/manifest.json`. Loading checks the file's sha256 against the manifest,
so a missing or altered weights file is a clear one-line error, never a
silently different model.
"""

from __future__ import annotations

import hashlib
import json
import os
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import onnxruntime as ort


class WeightsError(RuntimeError):
    """A weights file is missing, altered or not in the manifest."""


@dataclass(frozen=True)
class ModelSpec:
    """What the code needs to know about a model besides its bytes."""

    name: str
    file: str
    role: str  # "detector" | "teacher" | "student" | "single-pass"
    note: str
    shares: tuple[str, ...] = ()  # weights files whose tensors this graph reads (ONNX external data, same folder)


MODELS: dict[str, ModelSpec] = {
    spec.name: spec
    for spec in (
        ModelSpec(
            "ssd-mobilenet-v2-coco", "ssd_mobilenet_v2_coco.onnx", "detector", "COCO SSD-MobileNetV2, 300x300, heads + F2/F3/F4"
        ),
        ModelSpec(
            "efficientnet-lite0",
            "efficientnet_lite0_teacher.onnx",
            "teacher",
            "ImageNet EfficientNet-Lite0, dynamic H/W (multiples of 32)",
        ),
        ModelSpec(
            "efficientnet-lite2",
            "efficientnet_lite2_teacher.onnx",
            "teacher",
            "ImageNet EfficientNet-Lite2, dynamic H/W (multiples of 32)",
        ),
    )
}
DEFAULT_TEACHER = "efficientnet-lite0"
STUDENT_FILE = "student_{variant}.onnx"
SINGLE_PASS_FILE = "single_pass_{variant}.onnx"
for _variant in ("s1", "s2", "s3"):
    MODELS[f"student-{_variant}"] = ModelSpec(
        f"student-{_variant}",
        STUDENT_FILE.format(variant=_variant),
        "student",
        f"distilled student {_variant.upper()} on the detector's maps (oesir distill)",
    )
for _variant in ("s2", "s3"):  # S1 reads the photo, not the detector: it has no single pass
    MODELS[f"single-pass-{_variant}"] = ModelSpec(
        f"single-pass-{_variant}",
        SINGLE_PASS_FILE.format(variant=_variant),
        "single-pass",
        f"detector + student {_variant.upper()} + NMS + ROIAlign in one graph (oesir distill)",
        shares=(MODELS["ssd-mobilenet-v2-coco"].file, STUDENT_FILE.format(variant=_variant)),
    )


def weights_dir() -> Path:
    """`$OESIR_WEIGHTS`, else the repository's `weights/` next to the package."""
    env = os.environ.get("OESIR_WEIGHTS")
    return Path(env) if env else Path(__file__).resolve().parent.parent / "weights"


def read_manifest(directory: Path | None = None) -> dict[str, Any]:
    """The parsed `manifest.json` of the weights folder."""
    path = (directory or weights_dir()) / "manifest.json"
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise WeightsError(f"weights manifest not found: {path}") from None
    except json.JSONDecodeError as exc:
        raise WeightsError(f"weights manifest is not valid JSON: {path}: {exc}") from None


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    """Hex sha256 of a file, read in chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def verified_file(file_name: str, directory: Path | None = None) -> tuple[Path, str]:
    """Path and sha256 of a weights file, after checking it is listed, present and unaltered."""
    directory = directory or weights_dir()
    entry = read_manifest(directory).get("files", {}).get(file_name)
    path = directory / file_name
    if entry is None:
        raise WeightsError(f"weights file {path} is not listed in {directory / 'manifest.json'}")
    if not path.is_file():
        raise WeightsError(f"weights file missing: {path} (rebuild: python -m oesir_cli.convert --out weights)")
    digest = sha256_file(path)
    if digest != entry["sha256"]:
        raise WeightsError(f"weights file altered: {path} (sha256 {digest[:12]}..., manifest says {entry['sha256'][:12]}...)")
    return path, digest


def verified_path(name: str, directory: Path | None = None) -> Path:
    """Path of model `name` after checking it exists and matches the manifest's sha256."""
    if name not in MODELS:
        raise WeightsError(f"unknown model {name!r}; known: {', '.join(MODELS)}")
    return verified_file(MODELS[name].file, directory)[0]


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
    spec = MODELS[name]
    shared = tuple(verified_file(f, d)[1] for f in spec.shares)  # its external data, as the manifest vouches
    entry = read_manifest(d)["files"][spec.file]
    session = ort.InferenceSession(str(path), sess_options=session_options(), providers=["CPUExecutionProvider"])
    return Model(spec, entry, session, shared)
