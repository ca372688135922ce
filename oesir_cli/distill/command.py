"""`oesir distill` end to end: cache crops, train, export, check parity, learn whitening, list in the manifest."""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch

from ..detector import Detector
from ..registry import STUDENT_FILE, add_manifest_entry, load_model, session_options, verified_path
from ..teacher import Teacher
from .data import SHAPES, build_cache
from .export import example_inputs, export_student, merge_with_detector
from .model import Student
from .train import TrainConfig, train

PARITY_RTOL = 1e-4  # ONNX vs torch student: relative L2 error of each output map


@dataclass
class DistillResult:
    student_onnx: Path  # the student alone (what weights/ ships)
    single_pass: Path | None  # detector + student merged into one graph (S2, S3), in the cache folder
    whitening: Path | None
    final_loss: float
    parity: float  # worst relative error ONNX vs torch


def default_cache_dir() -> Path:
    return Path(os.environ.get("OESIR_CACHE", Path.home() / ".cache" / "oesir")) / "distill"


def parity_error(model: Student, onnx_path: Path) -> float:
    """Worst relative L2 error between the torch student and its ONNX export, on fixed random inputs."""
    example = example_inputs(model)
    with torch.no_grad():
        ref = model(*example.values())
    sess = ort.InferenceSession(str(onnx_path), sess_options=session_options(), providers=["CPUExecutionProvider"])
    got = sess.run(["student_s16", "student_s32"], {k: v.numpy() for k, v in example.items()})
    return max(float(np.linalg.norm(g - r.numpy()) / max(np.linalg.norm(r.numpy()), 1e-12)) for g, r in zip(got, ref))


def distill(
    images: Path,
    out: Path,
    config: TrainConfig,
    crops_per_image: int = 6,
    cache_dir: Path | None = None,
    resume: bool = False,
    whiten: bool = True,
    detector: Detector | None = None,
    teacher: Teacher | None = None,
    progress: Callable[[str, int, int, float | None], None] | None = None,
) -> DistillResult:
    """Train the student on photos under `images` and write its ONNX files (and whitening) into `out`."""
    cache_dir = Path(cache_dir) if cache_dir else default_cache_dir()
    detector, teacher = detector or Detector(), teacher or Teacher()

    def step(stage: str) -> Callable[..., None]:
        return lambda i, n, loss=None: progress(stage, i, n, loss) if progress else None

    cache = build_cache(images, cache_dir / "crops", crops_per_image, config.seed, detector, teacher, step("caching crops"))
    model, losses = train(cache, config, cache_dir / f"student_{config.variant}.pt", resume=resume, progress=step("training"))
    out.mkdir(parents=True, exist_ok=True)
    student_onnx = export_student(model, out / STUDENT_FILE.format(variant=config.variant))
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
    single = None
    if config.variant != "s1":  # S1 does not read the detector: nothing to merge
        detector_onnx = verified_path("ssd-mobilenet-v2-coco")
        single = merge_with_detector(detector_onnx, student_onnx, cache_dir / f"single_pass_{config.variant}.onnx")
    load_model.cache_clear()  # the file under this name has just changed
    whitening = None
    if whiten and config.variant == "s3":
        from ..api import learn_whitening_file
        from ..engine import EngineConfig

        whitening = learn_whitening_file(images, config=EngineConfig(model="student"), weights=out, progress=step("whitening"))
    return DistillResult(student_onnx, single, whitening, final, parity)
