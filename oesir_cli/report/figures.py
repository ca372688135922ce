"""The pictures of a report, as small pure functions on RGB uint8 arrays."""

from __future__ import annotations

import cv2
import numpy as np

from ..geometry import rescaled
from ..pixels import shrink_to_side

DISPLAY_SIDE = 960  # pictures are shown at most this long: enough to read, small enough to send
THUMB_SIDE = 160  # the provenance diagram's thumbnails
HEAT_ALPHA = 0.6  # the heatmap's opacity where the change score is highest
LINE_SHARE = 1 / 300  # outline width as a share of the picture's longer side (at least 2 px)

Colour = tuple[int, int, int]


def display_view(rgb: np.ndarray, side: int = DISPLAY_SIDE) -> tuple[np.ndarray, float]:
    """The picture reduced to at most `side` on its longer side, and the scale applied."""
    return shrink_to_side(rgb, side)


def line_width(shape: tuple[int, ...]) -> int:
    return max(2, round(max(shape[:2]) * LINE_SHARE))


def fit_mask(mask: np.ndarray, shape: tuple[int, ...]) -> np.ndarray:
    """`mask` (255 inside) resized to a picture of `shape` (nearest, so it stays binary)."""
    if mask.shape[:2] == shape[:2]:
        return mask
    return cv2.resize(mask, (shape[1], shape[0]), interpolation=cv2.INTER_NEAREST)


def outlined(rgb: np.ndarray, regions: list[tuple[np.ndarray, Colour]], tint: float = 0.0) -> np.ndarray:
    """The picture with each (mask, colour) region outlined, and tinted by `tint` (0: outline only)."""
    out = rgb.copy()
    width = line_width(rgb.shape)
    for mask, colour in regions:
        m = fit_mask(mask, rgb.shape) > 0
        if tint > 0:
            out[m] = ((1 - tint) * out[m] + tint * np.array(colour, np.float32)).astype(np.uint8)
        contours, _ = cv2.findContours(m.astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_SIMPLE)
        cv2.drawContours(out, contours, -1, (255, 255, 255), width + 2)  # a halo: the outline reads on any colour
        cv2.drawContours(out, contours, -1, colour, width)
    return out


def heat_blend(rgb: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """The heatmap (uint8, 0..255) in colour over the picture, more opaque where it is hotter."""
    heat = fit_mask(heat, rgb.shape)
    coloured = cv2.cvtColor(cv2.applyColorMap(heat, cv2.COLORMAP_INFERNO), cv2.COLOR_BGR2RGB).astype(np.float32)
    alpha = (HEAT_ALPHA * heat.astype(np.float32) / 255.0)[..., None]
    grey = cv2.cvtColor(cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY), cv2.COLOR_GRAY2RGB).astype(np.float32)
    return ((1 - alpha) * grey + alpha * coloured).astype(np.uint8)


def source_region(query_mask: np.ndarray, homography: np.ndarray, original_shape: tuple[int, ...]) -> np.ndarray:
    """Where the region `query_mask` (query pixels) came from in the original: the mask pulled back through
    `homography` (original pixels -> query pixels). Empty when the transform cannot be inverted."""
    h, w = original_shape[:2]
    try:
        back = np.linalg.inv(np.asarray(homography, np.float64))
    except np.linalg.LinAlgError:
        return np.zeros((h, w), np.uint8)
    warped = cv2.warpPerspective(query_mask, back, (w, h), flags=cv2.INTER_NEAREST, borderValue=0)
    return (warped > 0).astype(np.uint8) * 255


def scaled_homography(homography: np.ndarray, original_scale: float, query_scale: float) -> np.ndarray:
    """`homography` between two photos, for views of them reduced by these scales."""
    return rescaled(homography, (original_scale, original_scale), (query_scale, query_scale))
