"""Coverage-guided fuzzing of the photo loading path (`imageio.load_rgb`) with atheris.

Every input must end as an RGB uint8 array or an ImageError; anything else
(another exception, a wrong array, a hang past -timeout) is a crash that
libFuzzer reports and stops on. Seeds are small real photos from examples/
re-encoded in every format and mode oesir reads, so mutations start from
valid files of each kind.

    pip install atheris
    python bench/fuzz_imageio.py -max_total_time=660 -print_final_stats=1

Outside CI; the figures of the last run are in bench/RESULTS.md.
"""

from __future__ import annotations

import io
import os
import sys
import tempfile
from pathlib import Path

import atheris
import numpy as np

with atheris.instrument_imports():
    from PIL import Image

    from oesir_cli.imageio import ImageError, load_rgb

EXAMPLES = Path(__file__).resolve().parent.parent / "examples" / "photos"
SCRATCH = Path(tempfile.mkdtemp(prefix="oesir-fuzz-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
STATS = {"inputs": 0, "decoded": 0, "refused": 0}


def seeds(out: Path) -> None:
    """Small versions of the example photos in each format and mode."""
    out.mkdir(parents=True, exist_ok=True)
    for n, photo in enumerate(sorted(EXAMPLES.glob("*.jpg"))):
        im = Image.open(photo).convert("RGB")
        im.thumbnail((96, 96))
        exif = Image.Exif()
        exif[0x0112] = 6
        variants = {
            "jpg": lambda b, im=im: im.save(b, "JPEG", quality=80),
            "prog.jpg": lambda b, im=im: im.save(b, "JPEG", progressive=True),
            "exif.jpg": lambda b, im=im, exif=exif: im.save(b, "JPEG", exif=exif.tobytes()),
            "cmyk.jpg": lambda b, im=im: im.convert("CMYK").save(b, "JPEG"),
            "png": lambda b, im=im: im.save(b, "PNG"),
            "p.png": lambda b, im=im: im.convert("P").save(b, "PNG"),
            "la.png": lambda b, im=im: im.convert("LA").save(b, "PNG"),
            "i16.png": lambda b, im=im: Image.fromarray(np.asarray(im.convert("L"), np.uint16) * 257).save(b, "PNG"),
            "gif": lambda b, im=im: im.save(b, "GIF", save_all=True, append_images=[im.rotate(90)]),
            "webp": lambda b, im=im: im.save(b, "WEBP", quality=70),
            "tif": lambda b, im=im: im.convert("CMYK").save(b, "TIFF"),
            "bmp": lambda b, im=im: im.save(b, "BMP"),
        }
        for suffix, save in variants.items():
            buf = io.BytesIO()
            save(buf)
            (out / f"{n}.{suffix}").write_bytes(buf.getvalue())


def test_one_input(data: bytes) -> None:
    STATS["inputs"] += 1
    path = SCRATCH / "input"
    path.write_bytes(data)
    try:
        rgb = load_rgb(path, max_pixels=20_000_000, max_side=512)
    except ImageError as exc:
        if "\n" in str(exc):
            raise AssertionError(f"multi-line error: {exc!r}") from None
        STATS["refused"] += 1
        return
    if rgb.dtype != np.uint8 or rgb.ndim != 3 or rgb.shape[2] != 3 or min(rgb.shape[:2]) < 1 or max(rgb.shape[:2]) > 512:
        raise AssertionError(f"bad array {rgb.dtype} {rgb.shape}")
    STATS["decoded"] += 1
    if STATS["inputs"] % 20000 == 0:
        print(f"fuzz: {STATS}", file=sys.stderr, flush=True)


def main() -> None:
    corpus = SCRATCH / "corpus"
    seeds(corpus)
    args = [sys.argv[0], *sys.argv[1:], "-max_len=65536", "-timeout=20", "-rss_limit_mb=4096", str(corpus)]
    atheris.Setup(args, test_one_input)
    try:
        atheris.Fuzz()
    finally:
        print(f"fuzz: final {STATS}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
