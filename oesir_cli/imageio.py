"""Reading photos safely: one function that returns RGB uint8 or raises ImageError.

Messy folders hold truncated files, decompression bombs, CMYK, 16-bit, palette
and animated images; all of them end here as either a usable RGB array (EXIF
orientation applied, first frame, huge photos reduced while decoding) or an
ImageError with a one-line reason.
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
from PIL import Image, ImageFile, ImageOps

from .errors import OesirError

IMAGE_EXTENSIONS = frozenset({".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff", ".gif", ".heic", ".heif"})
DEFAULT_MAX_PIXELS = 200_000_000  # header-declared pixels above this are refused (decompression bombs)
WORKING_SIDE = 2048  # photos are reduced to this longer side while decoding; nothing downstream needs more

ImageFile.LOAD_TRUNCATED_IMAGES = False
try:  # optional HEIC support
    from pillow_heif import register_heif_opener  # type: ignore[import-not-found]

    register_heif_opener()
except ImportError:  # pragma: no cover - optional
    pass


class ImageError(OesirError, ValueError):
    """A file that cannot be used as a photo; the message is one line."""


def is_image_path(path: Path) -> bool:
    """True when the file name has an image extension (the content is checked on load)."""
    return path.suffix.lower() in IMAGE_EXTENSIONS


def load_rgb(path: str | os.PathLike, max_pixels: int = DEFAULT_MAX_PIXELS, max_side: int = WORKING_SIDE) -> np.ndarray:
    """Decode `path` to an RGB uint8 array (H, W, 3), EXIF-rotated, longer side <= max_side."""
    p = Path(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # e.g. "Corrupt EXIF data": the photo is still usable
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = None  # we apply our own limit below, before decoding
            with Image.open(p) as im:
                w, h = im.size
                if w * h > max_pixels:
                    raise ImageError(f"{p}: {w}x{h} pixels exceeds --max-pixels {max_pixels}")
                if w == 0 or h == 0:
                    raise ImageError(f"{p}: empty image")
                if im.format == "JPEG" and max(w, h) > 2 * max_side:
                    im.draft("RGB", (max_side, max_side))  # decode at reduced scale (DCT scaling)
                im.seek(0)
                im.load()
                im = ImageOps.exif_transpose(im)
                im = _to_rgb(im)
                if max(im.size) > max_side:
                    im.thumbnail((max_side, max_side), Image.Resampling.BILINEAR)
                return np.asarray(im, dtype=np.uint8).copy()
    except ImageError:
        raise
    except IsADirectoryError:
        raise ImageError(f"{p}: is a directory") from None
    except FileNotFoundError:
        raise ImageError(f"{p}: no such file") from None
    except PermissionError:
        raise ImageError(f"{p}: permission denied") from None
    except Image.UnidentifiedImageError:
        raise ImageError(f"{p}: not an image (unrecognised format)") from None
    except (OSError, SyntaxError, ValueError, EOFError, Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        msg = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
        raise ImageError(f"{p}: cannot decode ({msg})") from None


def _to_rgb(im: Image.Image) -> Image.Image:
    """Any PIL mode (grey, 16-bit, palette, alpha, CMYK) to 8-bit RGB; alpha over white."""
    if im.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(im, dtype=np.float64)
        top = arr.max() if arr.size else 1.0
        arr = (arr * (255.0 / (65535.0 if top > 255 else 255.0))).clip(0, 255).astype(np.uint8)
        im = Image.fromarray(arr, "L")
    elif im.mode == "F":
        arr = np.asarray(im, dtype=np.float64)
        lo, hi = float(np.nanmin(arr)), float(np.nanmax(arr))
        im = Image.fromarray(((arr - lo) / max(hi - lo, 1e-12) * 255).astype(np.uint8), "L")
    if im.mode == "P":
        im = im.convert("RGBA")
    if im.mode in ("RGBA", "LA", "PA"):
        rgba = im.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        im = Image.alpha_composite(background, rgba)
    return im.convert("RGB")
