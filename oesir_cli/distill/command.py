"""`oesir distill` end to end: cache crops, train, export, check parity, learn whitening, list in the manifest."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from ..detector import Detector, postprocess
from ..embed import region_descriptors
from ..engine import MAX_OBJECTS, MIN_SCORE
from ..imageio import load_rgb
from ..registry import (
    DETECTOR_SPEC,
    SINGLE_PASS_SPECS,
    STUDENT_MAPS,
    STUDENT_SPECS,
    Model,
    add_manifest_entry,
    load_model,
    read_manifest,
    session_options,
    sha256_file,
    verified_file,
    weights_dir,
)
from ..single_pass import SinglePass
from ..teacher import FeatureMaps, Teacher
from .data import SHAPES, build_cache
from .export import build_single_pass, example_inputs, export_student
from .model import Student
from .train import TrainConfig, train

PARITY_RTOL = 1e-4  # ONNX vs torch student: relative L2 error of each output map


@dataclass
class DistillResult:
    student_onnx: Path  # the student alone
    single_pass: Path | None  # detector + student + NMS + ROIAlign in one graph (S2, S3): what search runs
    whitening: Path | None
    final_loss: float
    parity: float  # worst relative error ONNX vs torch (student maps; single-pass maps and descriptors)


def default_cache_dir() -> Path:
    return Path(os.environ.get("OESIR_CACHE", Path.home() / ".cache" / "oesir")) / "distill"


def parity_error(model: Student, onnx_path: Path) -> float:
    """Worst relative L2 error between the torch student and its ONNX export, on fixed random inputs."""
    example = example_inputs(model)
    with torch.no_grad():
        ref = model(*example.values())
    sess = ort.InferenceSession(str(onnx_path), sess_options=session_options(), providers=["CPUExecutionProvider"])
    got = sess.run([m.name for m in STUDENT_MAPS], {k: v.numpy() for k, v in example.items()})
    return max(float(np.linalg.norm(g - r.numpy()) / max(np.linalg.norm(r.numpy()), 1e-12)) for g, r in zip(got, ref))


StudentMaps = Callable[[dict[str, np.ndarray]], tuple[np.ndarray, np.ndarray]]  # detector tensors -> s16, s32


def torch_maps(model: Student) -> StudentMaps:
    """The torch student as a reference for `single_pass_parity`."""

    def run(heads: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        with torch.no_grad():
            s16, s32 = model(*(torch.from_numpy(heads[k]) for k in model.inputs()))
        return s16.numpy(), s32.numpy()

    return run


def onnx_maps(student_onnx: Path) -> StudentMaps:
    """The exported student alone (checked against torch when it was exported) as a reference."""
    sess = ort.InferenceSession(str(student_onnx), sess_options=session_options(), providers=["CPUExecutionProvider"])
    names = [i.name for i in sess.get_inputs()]
    return lambda heads: tuple(sess.run([m.name for m in STUDENT_MAPS], {k: heads[k] for k in names}))


def single_pass_parity(student: StudentMaps, single: SinglePass, photos: list[np.ndarray], detector: Detector) -> float:
    """Worst relative L2 error of the single-pass graph against the student + numpy on `photos`.

    Checks, per photo, at the index's settings (`engine.MIN_SCORE`, `engine.MAX_OBJECTS`):
    the graph's boxes, scores and classes are the detector's own (`detector.postprocess`,
    class-agnostic; max abs error 1e-5 in normalised units, else an error is raised); its
    student maps against `student` on the detector's F2/F3/F4; its descriptors against
    `embed.region_descriptors` of those maps.
    """
    worst = 0.0
    for rgb in photos:
        h, w = rgb.shape[:2]
        heads = detector.heads(rgb)
        ref16, ref32 = student(heads)
        got = single.objects(rgb, MIN_SCORE, MAX_OBJECTS)
        det = postprocess(heads, w, h, min_score=MIN_SCORE, limit=MAX_OBJECTS, class_agnostic=True)
        side = np.array([w, h, w, h], np.float32)
        if len(got.boxes) != len(det.boxes) + 1 or not np.allclose(got.boxes[1:] / side, det.boxes / side, atol=1e-5):
            raise RuntimeError("single-pass graph's boxes differ from the detector's")
        if not (np.array_equal(got.classes[1:], det.classes) and np.allclose(got.scores[1:], det.scores, atol=1e-5)):
            raise RuntimeError("single-pass graph's scores or classes differ from the detector's")
        maps = single.maps(rgb)
        view = single.model.spec.view
        ref = region_descriptors(FeatureMaps(ref16[0], ref32[0], view / w, view / h), got.boxes)
        for a, b in ((maps.s16, ref16[0]), (maps.s32, ref32[0]), (got.descriptors, ref)):
            worst = max(worst, float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)))
    return worst


def assemble_single_pass(
    out: Path, variant: str, student: StudentMaps, images: Path, command: str, reference: str, detector: Detector
) -> tuple[Path, float]:
    """Write `single_pass_<variant>.onnx` from `student_<variant>.onnx` in `out`, check it against
    `student` on up to 3 photos under `images`, and list it in the manifest. Returns (path, parity)."""
    detector_onnx = _detector_next_to(out)
    spec = SINGLE_PASS_SPECS[variant]
    student_onnx = out / STUDENT_SPECS[variant].file
    single = build_single_pass(detector_onnx, student_onnx, out / spec.file)
    files = sorted(p for p in Path(images).rglob("*") if p.suffix.lower() in (".jpg", ".jpeg", ".png"))[:3]
    session = ort.InferenceSession(str(single), sess_options=session_options(), providers=["CPUExecutionProvider"])
    net = SinglePass(model=Model(spec, {"sha256": "not listed yet"}, session))
    parity = single_pass_parity(student, net, [load_rgb(f) for f in files], detector)
    if parity > PARITY_RTOL:
        single.unlink()
        raise RuntimeError(f"single-pass graph differs from {reference}: relative error {parity:.2e} > {PARITY_RTOL:g}")
    add_manifest_entry(
        single,
        {
            "model": f"single pass: SSD-MobileNetV2 detector + distilled student {variant.upper()} + box decoding, "
            "class-agnostic NMS and max-ROIAlign descriptors, one onnxruntime call",
            "source": {"detector": detector.model.version, "student": f"{student_onnx.name} (this folder)"},
            "shares": f"its tensors are read from {detector_onnx.name} and {student_onnx.name} in this folder "
            "(ONNX external data): onnxruntime needs both next to it",
            "licence": "Apache-2.0 (detector and student weights); see LICENSES.md",
            "inputs": dict(zip(spec.inputs, ([1, *_detector_input_shape()], [1], [1]))),
            "outputs": "boxes [K+1,4] normalised x1,y1,x2,y2 (whole photo first), scores, classes (COCO ids, 0 for the "
            "whole photo), descriptors [K+1,1392] (unwhitened), student_s16, student_s32",
            "preprocessing": "RGB resized to 300x300, float32 0..255 (the detector's)",
            "parity": f"max relative error vs {reference} + numpy ROIAlign {parity:.1e} on {len(files)} photos of {images}",
            "command": command,
        },
    )
    load_model.cache_clear()
    return single, parity


def _detector_input_shape() -> list[int]:
    """The detector's image input without the batch axis: [300, 300, 3]."""
    side = DETECTOR_SPEC.photo_input().side
    return [side, side, 3]


def _detector_next_to(out: Path) -> Path:
    """The verified detector file in `out` (copied there with its manifest entry when `out` is not `weights_dir()`):
    the single-pass graph reads its tensors, and onnxruntime only reads external data from the model's folder."""
    name = DETECTOR_SPEC.file
    source, digest = verified_file(name)
    target = out / name
    if target.resolve() != source.resolve():
        if not target.exists() or sha256_file(target) != digest:
            shutil.copyfile(source, target)
        entry = read_manifest(weights_dir())["files"][name]
        add_manifest_entry(target, {k: v for k, v in entry.items() if k not in ("sha256", "bytes")})
    return target


def distill(
    images: Path,
    out: Path | None,
    config: TrainConfig,
    crops_per_image: int = 6,
    cache_dir: Path | None = None,
    resume: bool = False,
    whiten: bool = True,
    detector: Detector | None = None,
    teacher: Teacher | None = None,
    progress: Callable[[str, int, int, float | None], None] | None = None,
) -> DistillResult:
    """Train the student on photos under `images` and write its ONNX files (and whitening) into `out` (None: `weights_dir()`)."""
    out = Path(out) if out is not None else weights_dir()
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    detector, teacher = detector or Detector(), teacher or Teacher()

    def step(stage: str) -> Callable[..., None]:
        return lambda i, n, loss=None: progress(stage, i, n, loss) if progress else None

    cache = build_cache(images, cache_dir / "crops", crops_per_image, config.seed, detector, teacher, step("caching crops"))
    model, losses = train(cache, config, cache_dir / f"student_{config.variant}.pt", resume=resume, progress=step("training"))
    out.mkdir(parents=True, exist_ok=True)
    student_onnx = export_student(model, out / STUDENT_SPECS[config.variant].file)
    parity = parity_error(model, student_onnx)
    if parity > PARITY_RTOL:
        raise RuntimeError(f"exported student differs from torch: relative error {parity:.2e} > {PARITY_RTOL:g}")
    checkpoint = cache_dir / f"student_{config.variant}.pt"
    final = losses[-1] if losses else float(torch.load(checkpoint, weights_only=False).get("last_loss", float("nan")))
    command = (
        f"oesir distill --images {images} --variant {config.variant} --iterations {config.iterations} "
        f"--batch {config.batch} --lr {config.lr:g} --seed {config.seed} --crops {crops_per_image} --out {out}"
    )
    add_manifest_entry(
        student_onnx,
        {
            "model": f"distilled student {config.variant.upper()} (the paper's Sec. 3.3) on the SSD-MobileNetV2 detector",
            "source": {
                "detector": detector.model.version,
                "teacher": teacher.model.version,
                "training photos": str(images),
                "crops": cache.count,
                "train": asdict(config),
                "final loss": round(final, 5) if np.isfinite(final) else None,
            },
            "licence": "Apache-2.0 (trained from the Apache-2.0 detector and teacher weights); see LICENSES.md",
            "inputs": {n: list(SHAPES[n][0]) for n in model.inputs()},
            "preprocessing": "inputs are the detector's tensors (NHWC) for its 300x300 image; outputs student_s16 "
            "[1,112,20,20] and student_s32 [1,1280,10,10]: the teacher's maps of a 320x320 view of the photo",
            "command": command,
        },
    )
    load_model.cache_clear()  # the files under these names have just changed
    single = None
    if config.variant != "s1":  # S1 does not read the detector: nothing to merge
        single, sp_parity = assemble_single_pass(out, config.variant, torch_maps(model), images, command, "torch", detector)
        parity = max(parity, sp_parity)
    whitening = None
    if whiten and config.variant == "s3":
        from ..engine import EngineConfig
        from ..learn import learn_whitening_file

        whitening = learn_whitening_file(images, config=EngineConfig.new("student"), weights=out, progress=step("whitening"))
    return DistillResult(student_onnx, single, whitening, final, parity)
