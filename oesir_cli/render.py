"""Writing result images: atomic PNG writes and a report overlay."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import cv2
import numpy as np

from .imageio import load_rgb
from .store import atomic_write_bytes

if TYPE_CHECKING:
    from .localize import LocalizeResult


def write_png(path: Path, image: np.ndarray) -> None:
    """Encode `image` (grey, or RGB) as PNG and write it atomically."""
    arr = image if image.ndim == 2 else cv2.cvtColor(image, cv2.COLOR_RGB2BGR)
    ok, buf = cv2.imencode(".png", arr)
    if not ok:
        raise OSError(f"cannot encode {path}")
    path = Path(path)
    if path.parent and not path.parent.exists():
        raise OSError(f"folder does not exist: {path.parent}")
    atomic_write_bytes(path, buf.tobytes())


def overlay_image(rgb: np.ndarray, mask: np.ndarray, colour: tuple[int, int, int] = (255, 40, 40)) -> np.ndarray:
    """The photo with the masked region tinted and outlined, for a report."""
    out = rgb.copy()
    m = mask > 0
    tint = np.array(colour, np.float32)
    out[m] = (0.55 * out[m] + 0.45 * tint).astype(np.uint8)
    contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
    cv2.drawContours(out, contours, -1, colour, 2)
    return out


def suffixed(path: Path, role: str | None) -> Path:
    """`path` with "-<role>" before its extension (mask.png -> mask-host.png); unchanged without a role."""
    return path if role is None else path.with_name(f"{path.stem}-{role}{path.suffix}")


def write_localize_outputs(
    query: str | os.PathLike,
    result: LocalizeResult,
    mask: Path | None = None,
    heatmap: Path | None = None,
    overlay: Path | None = None,
    role: str | None = None,
) -> None:
    """Write those of the mask, heatmap and overlay (on the photo at `query`) that were asked for.

    With `role` ("host" / "donor") each name gets "-<role>" before its extension, so
    the results against a photo's host and donor never overwrite each other.
    """
    if mask:
        write_png(suffixed(mask, role), result.mask)
    if heatmap:
        write_png(suffixed(heatmap, role), result.heatmap)
    if overlay:
        write_png(suffixed(overlay, role), overlay_image(load_rgb(query), result.mask))
