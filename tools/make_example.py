"""Make examples/spliced.jpg: the catalogue of chelsea.jpg pasted into rocket.jpg (both public domain / CC0).

    python tools/make_example.py

Also writes examples/spliced_mask.png (255 = pasted). Deterministic.
"""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

ROOT = Path(__file__).resolve().parent.parent / "examples"


def main() -> None:
    host = cv2.imread(str(ROOT / "photos" / "rocket.jpg"))
    donor = cv2.imread(str(ROOT / "photos" / "chelsea.jpg"))
    patch = donor[20:260, 90:330]  # the catalogue's head and chest
    patch = cv2.resize(patch, None, fx=0.75, fy=0.75, interpolation=cv2.INTER_AREA)
    h, w = patch.shape[:2]
    # an elliptical cut-out, as a person with a lasso tool would make
    cut = np.zeros((h, w), np.uint8)
    cv2.ellipse(cut, (w // 2, h // 2), (w // 2 - 2, h // 2 - 2), 0, 0, 360, 255, -1)
    y, x = 190, 40
    out = host.copy()
    region = out[y : y + h, x : x + w]
    region[cut > 0] = patch[cut > 0]
    mask = np.zeros(host.shape[:2], np.uint8)
    mask[y : y + h, x : x + w] = cut
    cv2.imwrite(str(ROOT / "spliced.jpg"), out, [cv2.IMWRITE_JPEG_QUALITY, 90])
    cv2.imwrite(str(ROOT / "spliced_mask.png"), mask)


if __name__ == "__main__":
    main()
