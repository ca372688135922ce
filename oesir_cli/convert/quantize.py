"""Int8 copies of the detector and the teacher, for indexing at a third of the CPU.

    pip install onnx   # onnxruntime's quantiser needs it (in the train, convert and test extras)
    python -m oesir_cli.convert.quantize --images ../shared/data/imagenet-sample/train --out oesir_cli/weights

The two networks are most of what describing a photo costs (bench/RESULTS.md,
"Session 20"). Static quantisation (onnxruntime's `quantize_static`, QDQ
format): int8 weights per output channel, uint8 activations whose ranges are
the minimum and maximum seen on calibration photos, fed exactly as the model's
record feeds a photo. On CPUs with int8 dot products (AVX512-VNNI, AVX-VNNI)
the convolutions run ~2.5x faster; the whitened object descriptors stay at a
cosine of ~0.99 to the float model's (checked in tests/test_weights.py).

Calibration photos must be none of the photos a benchmark searches
(imagenet-sample/train is the project's training set). The sorted photos are
taken every `CALIBRATION_STRIDE`-th, at most `CALIBRATION_PHOTOS` of them, and
named with their sha256 in the manifest entry, so the file can be rebuilt.
"""

from __future__ import annotations

import argparse
import importlib.metadata as md
import tempfile
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from ..imageio import load_rgb
from ..indexer import walk
from ..registry import MODEL_SPECS, QUANTISED_SPECS, ModelSpec, add_manifest_entry, read_manifest, sha256_file, weights_dir

CALIBRATION_STRIDE = 8  # every 8th photo of the sorted folder: spread over its classes
CALIBRATION_PHOTOS = 48  # MinMax ranges settle with a few dozen photos (RESULTS "Session 20")
COMMAND = "python -m oesir_cli.convert.quantize --images {images} --out oesir_cli/weights"


def calibration_photos(images: str | Path, stride: int = CALIBRATION_STRIDE, limit: int = CALIBRATION_PHOTOS) -> list[Path]:
    """The photos a quantised model is calibrated on: every `stride`-th of the sorted photos under `images`."""
    if stride < 1 or limit < 1:
        raise ValueError(f"stride and limit must be at least 1, not {stride} and {limit}")
    errors: list[tuple[str, str]] = []
    photos = sorted(walk([images], errors))[::stride][:limit]
    if not photos:
        raise ValueError(f"no photos under {images} to calibrate on")
    return photos


def _inputs(spec: ModelSpec, photos: list[Path]) -> Iterator[dict[str, np.ndarray]]:
    """Each photo as the model's image input, prepared by its record's rule (the rule search uses)."""
    image = spec.photo_input()
    for path in photos:
        yield {spec.inputs[0]: image.tensor(image.resize(load_rgb(path)))}


def quantise(spec: ModelSpec, photos: list[Path], out: Path, source_dir: Path | None = None) -> Path:
    """Write the int8 model of `spec` (a `QUANTISED_SPECS` record) into `out`, from its float source in `source_dir`
    (default: `out`), calibrated on `photos`; its path."""
    from onnxruntime.quantization import CalibrationDataReader, CalibrationMethod, QuantFormat, QuantType, quantize_static
    from onnxruntime.quantization.shape_inference import quant_pre_process

    if not spec.quantised_from:
        raise ValueError(f"{spec.name} is not a quantised model")
    source = (source_dir or out) / MODEL_SPECS[spec.quantised_from].file

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self.batches = _inputs(spec, photos)

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    target = out / spec.file
    with tempfile.TemporaryDirectory(dir=out) as tmp:
        prepared = Path(tmp) / "prepared.onnx"
        quant_pre_process(str(source), str(prepared), skip_symbolic_shape=True)  # shapes and fusions first, as advised
        fresh = Path(tmp) / spec.file
        quantize_static(
            str(prepared),
            str(fresh),
            Reader(),
            quant_format=QuantFormat.QDQ,
            per_channel=True,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            calibrate_method=CalibrationMethod.MinMax,
        )
        fresh.replace(target)
    return target


def build(images: Path, out: Path, specs: tuple[ModelSpec, ...] = QUANTISED_SPECS) -> list[Path]:
    """Quantise every int8 model into `out` and list each in its manifest with what it was made from."""
    photos = calibration_photos(images)
    sources = read_manifest(out)["files"]
    written = []
    for spec in specs:
        source = MODEL_SPECS[spec.quantised_from]
        path = quantise(spec, photos, out)
        add_manifest_entry(
            path,
            {
                "model": spec.name,
                "source": {"file": source.file, "sha256": sources[source.file]["sha256"], "model": source.name},
                "licence": sources[source.file].get("licence", "as its source"),
                "converter": (
                    f"onnxruntime {md.version('onnxruntime')} quantize_static: QDQ, int8 weights per output channel, "
                    "uint8 activations, MinMax calibration"
                ),
                "calibration": {
                    "photos": str(images),
                    "rule": f"sorted, every {CALIBRATION_STRIDE}th, at most {CALIBRATION_PHOTOS}",
                    "files": {p.name: sha256_file(p) for p in photos},
                },
                "preprocessing": spec.photo_input().describe(),
                "command": COMMAND.format(images=images),
            },
        )
        written.append(path)
    return written


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=Path, required=True, help="calibration photos (never benchmark photos)")
    parser.add_argument("--out", type=Path, default=weights_dir(), help="weights folder holding the float sources")
    args = parser.parse_args()
    for path in build(args.images, args.out):
        print(path)


if __name__ == "__main__":
    main()
