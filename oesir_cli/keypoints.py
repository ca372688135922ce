"""RootSIFT keypoints: the one extraction used by indexing, search and alignment.

Object embeddings rank whole objects; a pasted patch that is small, partly
occluded or re-cut is found more reliably by many local descriptors voting for
the photo they came from (provenance filtering). Descriptors are stored as
uint8 (RootSIFT x 255), keypoints as (x, y, size, angle) in photo pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

MAX_SIDE = 768  # stored and query features: SIFT runs on at most this longer side
SIFT_CONTRAST = 0.04  # OpenCV's default contrast threshold
DESCRIPTOR_BYTES = 128
STORED_KEYPOINTS = 1000  # per stored photo (and per query): the default of `extract`


@dataclass(frozen=True)
class LocalFeatures:
    """Keypoints [N, 4] (x, y, size, angle; photo pixels) and RootSIFT uint8 descriptors [N, 128]."""

    keypoints: np.ndarray
    descriptors: np.ndarray

    def __len__(self) -> int:
        return len(self.descriptors)


_SIFT: dict[tuple[int, float], cv2.SIFT] = {}


def use_threads(threads: int) -> None:
    """Run SIFT on `threads` threads in this process. OpenCV splits it over every core by default, which
    helps a process alone but costs ~15% more CPU per photo (37 -> 43 ms here); processes that already
    keep one core each busy (index workers, Ray actors) want one."""
    if threads < 1:
        raise ValueError(f"threads must be >= 1, got {threads}")
    cv2.setNumThreads(threads)


def _sift(n: int, contrast: float) -> cv2.SIFT:
    if (n, contrast) not in _SIFT:
        _SIFT[n, contrast] = cv2.SIFT_create(nfeatures=n, contrastThreshold=contrast)
    return _SIFT[n, contrast]


def empty() -> LocalFeatures:
    """No keypoints."""
    return LocalFeatures(np.zeros((0, 4), np.float32), np.zeros((0, DESCRIPTOR_BYTES), np.uint8))


def rootsift(desc: np.ndarray) -> np.ndarray:
    """SIFT -> RootSIFT (L1 normalise, square root), as uint8 scaled by 255."""
    d = desc.astype(np.float32)
    d /= np.maximum(d.sum(1, keepdims=True), 1e-7)
    return np.clip(np.sqrt(d) * 255.0 + 0.5, 0, 255).astype(np.uint8)


def extract(
    rgb: np.ndarray,
    max_keypoints: int = STORED_KEYPOINTS,
    where: np.ndarray | None = None,
    *,
    max_side: int | None = MAX_SIDE,
    contrast: float = SIFT_CONTRAST,
    keep_ties: bool = False,
) -> LocalFeatures:
    """RootSIFT features of a photo; with `where` (bool [H, W]) only keypoints centred there.

    SIFT runs on the photo resized to `max_side` (None: as it is); keypoints
    are returned in photo pixels. SIFT keeps every keypoint whose response ties
    with the n-th strongest (its extra orientations), so it may return a few
    more than `max_keypoints`: stored features are cut at the limit (a photo
    costs at most that many rows), alignment keeps them all (`keep_ties`).
    """
    grey = cv2.cvtColor(rgb, cv2.COLOR_RGB2GRAY)
    h, w = grey.shape
    s = 1.0 if max_side is None else min(1.0, max_side / max(h, w))
    mask = None if where is None else where.astype(np.uint8) * 255
    if s < 1.0:
        size = (int(round(w * s)), int(round(h * s)))
        grey = cv2.resize(grey, size, interpolation=cv2.INTER_AREA)
        mask = None if mask is None else cv2.resize(mask, size, interpolation=cv2.INTER_NEAREST)
    if mask is None:
        kps, desc = _sift(max_keypoints, contrast).detectAndCompute(grey, None)
    else:
        # OpenCV keeps its `nfeatures` strongest keypoints of the whole image *before* it applies the mask, so a
        # mask over a small part would keep only the few of those that fall there: detect them all, keep the
        # strongest inside
        kps, desc = _sift(0, contrast).detectAndCompute(grey, mask)
        kps, desc = _strongest(kps, desc, max_keypoints, keep_ties)
    if desc is None or not kps:
        return empty()
    kp = np.array([(k.pt[0] / s, k.pt[1] / s, k.size / s, k.angle) for k in kps], np.float32)
    if not keep_ties:
        desc, kp = desc[:max_keypoints], kp[:max_keypoints]
    return LocalFeatures(kp, rootsift(desc))


def _strongest(
    kps: tuple[cv2.KeyPoint, ...], desc: np.ndarray | None, n: int, keep_ties: bool
) -> tuple[list[cv2.KeyPoint], np.ndarray | None]:
    """The `n` keypoints of highest response (with `keep_ties`, also those tying with the n-th), strongest first."""
    if desc is None or n <= 0 or len(kps) <= n:  # 0: all, as OpenCV's `nfeatures`
        return list(kps), desc
    response = np.array([k.response for k in kps], np.float32)
    order = np.argsort(-response, kind="stable")
    if keep_ties:
        order = order[response[order] >= response[order[n - 1]]]
    else:
        order = order[:n]
    return [kps[i] for i in order], desc[order]


# descriptor layout [row 4][column 4][orientation 8] in the keypoint's rotated frame
_MIRROR_ORDER = np.arange(128).reshape(4, 4, 8)[::-1][:, :, (-np.arange(8)) % 8].ravel()


def mirrored(features: LocalFeatures, width: int) -> LocalFeatures:
    """The features of the photo's mirror image, without running SIFT again (x -> width - x).

    Mirroring a patch mirrors its dominant orientation (a -> 180 - a); in the
    keypoint's rotated frame that flips the descriptor's rows and reverses its
    orientation bins, so the mirror image's descriptor is a fixed permutation
    of the original one (the same numbers SIFT gives on the flipped image for
    the same keypoint).
    """
    kp = features.keypoints.copy()
    kp[:, 0] = width - kp[:, 0]
    kp[:, 3] = (180.0 - kp[:, 3]) % 360.0
    return LocalFeatures(kp, np.ascontiguousarray(features.descriptors[:, _MIRROR_ORDER]))


def spread(points: np.ndarray, width: int, height: int, cells: int = 8) -> float:
    """Share of a cells x cells grid over the photo that holds at least one point.

    A host matches the query all over; a donor only where its object was pasted.
    """
    if len(points) == 0:
        return 0.0
    gx = np.clip((points[:, 0] / max(width, 1) * cells).astype(int), 0, cells - 1)
    gy = np.clip((points[:, 1] / max(height, 1) * cells).astype(int), 0, cells - 1)
    return len(set(zip(gx.tolist(), gy.tolist()))) / float(cells * cells)
