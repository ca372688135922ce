"""Training crops and what the two networks say about them, cached on disk.

Each crop is a random resized crop (scale 0.25-1, aspect 3/4-4/3) of an
unlabelled photo, flipped half the time, colour-jittered, at 320x320. For it
the cache holds the detector's input (300x300), its backbone maps F2/F3/F4 and
the teacher's stride-16 and stride-32 maps at 320x320, as float16 memmaps, so
training never runs the teacher. A cache is valid for the models and settings
named in its `meta.json` and reused when they match.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np

from ..detector import Detector
from ..imageio import ImageError, load_rgb
from ..indexer import walk
from ..registry import DETECTOR_SPEC, STUDENT_MAPS, VIEW_SIDE
from ..teacher import Teacher

CROP = VIEW_SIDE  # the student learns the teacher's maps of views of this side
_DETECTOR_INPUT = DETECTOR_SPEC.photo_input()
# cached arrays: the detector's resized image, its backbone maps, and the teacher's maps (named s16, s32 here)
SHAPES = {
    "image": ((_DETECTOR_INPUT.side, _DETECTOR_INPUT.side, 3), np.uint8),
    **{m.name: (m.shape, np.float16) for m in DETECTOR_SPEC.maps},
    **{key: (m.shape, np.float16) for key, m in zip(("s16", "s32"), STUDENT_MAPS)},
}


def random_crop(rgb: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Random resized crop to CROP x CROP with flip and colour jitter (brightness, contrast, saturation)."""
    h, w = rgb.shape[:2]
    for _ in range(10):
        area = rng.uniform(0.25, 1.0) * h * w
        ratio = np.exp(rng.uniform(np.log(3 / 4), np.log(4 / 3)))
        cw, ch = int(round(np.sqrt(area * ratio))), int(round(np.sqrt(area / ratio)))
        if 0 < cw <= w and 0 < ch <= h:
            break
    else:
        cw, ch = min(w, h), min(w, h)
    x, y = int(rng.integers(0, w - cw + 1)), int(rng.integers(0, h - ch + 1))
    crop = cv2.resize(rgb[y : y + ch, x : x + cw], (CROP, CROP), interpolation=cv2.INTER_AREA)
    if rng.random() < 0.5:
        crop = crop[:, ::-1]
    f = crop.astype(np.float32)
    f = f * rng.uniform(0.7, 1.3)  # brightness
    f = (f - f.mean()) * rng.uniform(0.7, 1.3) + f.mean()  # contrast
    grey = f.mean(2, keepdims=True)
    f = grey + (f - grey) * rng.uniform(0.7, 1.3)  # saturation
    return np.clip(f, 0, 255).astype(np.uint8)


@dataclass
class CropCache:
    """Memory-mapped arrays, one row per crop."""

    directory: Path
    count: int

    def array(self, name: str, mode: str = "r") -> np.ndarray:
        shape, dtype = SHAPES[name]
        return np.lib.format.open_memmap(self.directory / f"{name}.npy", mode=mode, dtype=dtype, shape=(self.count, *shape))


def build_cache(
    images: Path,
    directory: Path,
    crops_per_image: int,
    seed: int,
    detector: Detector,
    teacher: Teacher,
    progress: Callable[[int, int], None] | None = None,
) -> CropCache:
    """Make (or reuse) the crop cache for the photos under `images`."""
    errors: list = []
    files = sorted(walk([images], errors))
    if not files:
        raise ValueError(f"no photos under {images}")
    meta = {
        "images": str(Path(images).resolve()),
        "files": len(files),
        "crops_per_image": crops_per_image,
        "seed": seed,
        "detector": detector.model.version,
        "teacher": teacher.model.version,
    }
    directory.mkdir(parents=True, exist_ok=True)
    meta_path = directory / "meta.json"
    count = len(files) * crops_per_image
    cache = CropCache(directory, count)
    if meta_path.exists() and json.loads(meta_path.read_text()) == {**meta, "complete": True}:
        return cache
    arrays = {name: cache.array(name, "w+") for name in SHAPES}
    rng = np.random.default_rng(seed)
    row = 0
    for i, f in enumerate(files):
        if progress:
            progress(i, len(files))
        try:
            rgb = load_rgb(f, max_side=1024)
        except ImageError:
            rgb = np.zeros((CROP, CROP, 3), np.uint8)  # keeps rows aligned; a flat crop teaches little harm
        for _ in range(crops_per_image):
            crop = random_crop(rgb, rng)
            heads = detector.heads(crop)
            arrays["image"][row] = detector.model.spec.photo_input().resize(crop)
            for name in detector.model.spec.map_names():
                arrays[name][row] = heads[name][0]
            # the crop is already the teacher's view: its input as is, no resize
            s16, s32 = teacher.model.session.run(
                list(teacher.model.spec.outputs), {teacher.model.spec.inputs[0]: teacher.image.tensor(crop)}
            )
            arrays["s16"][row], arrays["s32"][row] = s16[0], s32[0]
            row += 1
    for a in arrays.values():
        a.flush()
    meta_path.write_text(json.dumps({**meta, "complete": True}))
    if progress:
        progress(len(files), len(files))
    return cache
