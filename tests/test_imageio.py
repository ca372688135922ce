"""Photo decoding: modes, EXIF orientation, bombs and bad files end as RGB or one-line ImageError."""

from __future__ import annotations

import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from oesir_cli.imageio import ImageError, load_rgb


def _rgb(w: int = 40, h: int = 30) -> Image.Image:
    arr = np.zeros((h, w, 3), np.uint8)
    arr[:, : w // 2] = (255, 0, 0)
    return Image.fromarray(arr)


@pytest.mark.parametrize("mode", ["L", "P", "RGBA", "LA", "CMYK", "I;16", "1"])
def test_modes_become_rgb(tmp_path, mode):
    im = _rgb()
    if mode == "I;16":
        im = Image.fromarray((np.arange(1200).reshape(30, 40) * 50).astype(np.uint16))
    else:
        im = im.convert(mode)
    path = tmp_path / ("x.tiff" if mode in ("CMYK", "I;16") else "x.png")
    im.save(path)
    out = load_rgb(path)
    assert out.dtype == np.uint8 and out.shape == (30, 40, 3)


def test_exif_orientation_applied(tmp_path):
    im = _rgb(40, 30)
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise on display
    path = tmp_path / "r.jpg"
    im.save(path, exif=exif)
    assert load_rgb(path).shape == (40, 30, 3)


def test_animated_gif_first_frame(tmp_path):
    frames = [_rgb(), Image.new("RGB", (40, 30), (0, 255, 0))]
    path = tmp_path / "a.gif"
    frames[0].save(path, save_all=True, append_images=frames[1:])
    out = load_rgb(path)
    assert out[0, 0, 0] > 200 and out[0, 0, 1] < 50


def test_decompression_bomb_refused_before_decoding(tmp_path):
    # a PNG header declaring 50,000 x 50,000 pixels, with almost no data
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", 50000, 50000, 8, 2, 0, 0, 0))
    png += chunk(b"IDAT", zlib.compress(b"\x00" * 100)) + chunk(b"IEND", b"")
    path = tmp_path / "bomb.png"
    path.write_bytes(png)
    with pytest.raises(ImageError, match="exceeds --max-pixels"):
        load_rgb(path, max_pixels=100_000_000)


def test_large_photo_downscaled(tmp_path):
    path = tmp_path / "big.jpg"
    Image.new("RGB", (5000, 3000), (10, 20, 30)).save(path)
    out = load_rgb(path)
    assert max(out.shape[:2]) == 2048


@pytest.mark.parametrize(
    "content,match",
    [(b"", "not an image|empty|cannot decode"), (b"hello", "not an image"), (None, "is a directory")],
)
def test_bad_files_one_line(tmp_path, content, match):
    path = tmp_path / "bad.jpg"
    if content is None:
        path.mkdir()
    else:
        path.write_bytes(content)
    with pytest.raises(ImageError, match=match) as exc:
        load_rgb(path)
    assert "\n" not in str(exc.value)


def test_truncated_jpeg(tmp_path):
    path = tmp_path / "t.jpg"
    _rgb(400, 300).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError, match="cannot decode"):
        load_rgb(path)


def test_heic_photo_loads_when_pillow_heif_is_installed(tmp_path):
    pillow_heif = pytest.importorskip("pillow_heif")  # the `heic` extra; part of the test extra
    pillow_heif.register_heif_opener()
    src = Image.open(Path(__file__).parent.parent / "examples" / "photos" / "chelsea.jpg").convert("RGB")
    src.thumbnail((240, 240))
    src.save(tmp_path / "catalogue.heic", quality=90)
    rgb = load_rgb(tmp_path / "catalogue.heic")
    assert rgb.shape == (src.height, src.width, 3)
    assert np.abs(rgb.astype(int) - np.asarray(src, int)).mean() < 8
