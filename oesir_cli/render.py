"""Writing result images: atomic PNG writes and a report overlay."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from .store import atomic_write_bytes


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
