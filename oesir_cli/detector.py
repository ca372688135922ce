"""The object detector (the paper's M_o): SSD-MobileNetV2 COCO run by onnxruntime.

The ONNX graph stops at the six box-predictor heads; this module holds the one
small numpy path that turns them into boxes: SSD anchors, box decoding (TF
Object Detection API's Faster R-CNN coder, scales 10/10/5/5) and NMS. Its input
rule (300x300, bilinear) and output names are those of its `registry.ModelSpec`.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .registry import DEFAULT_DETECTOR, MODEL_SPECS, Model, open_model

NMS_IOU = 0.6  # boxes overlapping a better one by more than this are dropped (here and in the single-pass graph)
GRID = (19, 10, 5, 3, 2, 1)
MIN_SCALE, MAX_SCALE = 0.2, 0.95
ASPECTS = (1.0, 2.0, 0.5, 3.0, 0.3333)
SCALE_FACTORS = (10.0, 10.0, 5.0, 5.0)


@dataclass(frozen=True)
class Detections:
    """Boxes in pixels of the input photo, [N, 4] as x1, y1, x2, y2; scores; COCO class ids (1..90)."""

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray


def ssd_anchors() -> np.ndarray:
    """SSD anchors [N, 4] as (cy, cx, h, w), normalised, in the order of the heads."""
    n = len(GRID)
    scales = [MIN_SCALE + (MAX_SCALE - MIN_SCALE) * i / (n - 1) for i in range(n)] + [1.0]
    out = []
    for layer, size in enumerate(GRID):
        if layer == 0:
            shapes = [(0.1, 1.0), (scales[0], 2.0), (scales[0], 0.5)]
        else:
            shapes = [(scales[layer], a) for a in ASPECTS] + [(np.sqrt(scales[layer] * scales[layer + 1]), 1.0)]
        hw = np.array([(s / np.sqrt(a), s * np.sqrt(a)) for s, a in shapes])
        centres = (np.arange(size) + 0.5) / size
        cy, cx = np.meshgrid(centres, centres, indexing="ij")
        grid = np.stack([cy.ravel(), cx.ravel()], 1)
        layer_anchors = np.concatenate([np.repeat(grid, len(shapes), 0), np.tile(hw, (size * size, 1))], 1)
        out.append(layer_anchors)
    return np.concatenate(out).astype(np.float32)


_ANCHORS = ssd_anchors()


def decode(box_encodings: np.ndarray, anchors: np.ndarray = _ANCHORS) -> np.ndarray:
    """Decode [N, 4] (ty, tx, th, tw) against anchors to normalised (x1, y1, x2, y2)."""
    ty, tx, th, tw = (box_encodings / np.asarray(SCALE_FACTORS, np.float32)).T
    acy, acx, ah, aw = anchors.T
    cy, cx = ty * ah + acy, tx * aw + acx
    h, w = np.exp(th) * ah, np.exp(tw) * aw
    return np.stack([cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2], 1)


def nms(boxes: np.ndarray, scores: np.ndarray, iou: float, limit: int) -> np.ndarray:
    """Greedy non-maximum suppression; indices of kept boxes, best first."""
    order = np.argsort(-scores, kind="stable")
    keep: list[int] = []
    area = np.clip(boxes[:, 2] - boxes[:, 0], 0, None) * np.clip(boxes[:, 3] - boxes[:, 1], 0, None)
    while order.size and len(keep) < limit:
        i = order[0]
        keep.append(int(i))
        rest = order[1:]
        x1 = np.maximum(boxes[i, 0], boxes[rest, 0])
        y1 = np.maximum(boxes[i, 1], boxes[rest, 1])
        x2 = np.minimum(boxes[i, 2], boxes[rest, 2])
        y2 = np.minimum(boxes[i, 3], boxes[rest, 3])
        inter = np.clip(x2 - x1, 0, None) * np.clip(y2 - y1, 0, None)
        overlap = inter / np.maximum(area[i] + area[rest] - inter, 1e-9)
        order = rest[overlap <= iou]
    return np.asarray(keep, dtype=np.int64)


def heads_to_arrays(outputs: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
    """Flatten the six heads to box encodings [N, 4] and class logits [N, 91]."""
    boxes = np.concatenate([outputs[f"box_{i}"].reshape(-1, 4) for i in range(len(GRID))])
    logits = np.concatenate([outputs[f"cls_{i}"].reshape(-1, 91) for i in range(len(GRID))])
    return boxes, logits


def postprocess(
    outputs: dict[str, np.ndarray],
    width: int,
    height: int,
    min_score: float = 0.3,
    iou: float = NMS_IOU,
    limit: int = 100,
    class_agnostic: bool = False,
) -> Detections:
    """Heads -> pixel boxes: decode, sigmoid, per-class (or class-agnostic) NMS."""
    enc, logits = heads_to_arrays(outputs)
    scores = 1.0 / (1.0 + np.exp(-logits[:, 1:]))  # column 0 is background
    boxes = np.clip(decode(enc), 0.0, 1.0)
    if class_agnostic:
        cls = scores.argmax(1)
        best = scores[np.arange(len(cls)), cls]
        cand = np.flatnonzero(best >= min_score)
        kept = cand[nms(boxes[cand], best[cand], iou, limit)]
        sel_boxes, sel_scores, sel_cls = boxes[kept], best[kept], cls[kept]
    else:
        rows, cols = np.nonzero(scores >= min_score)
        keep_b, keep_s, keep_c = [], [], []
        for c in np.unique(cols):
            idx = rows[cols == c]
            k = idx[nms(boxes[idx], scores[idx, c], iou, limit)]
            keep_b.append(boxes[k])
            keep_s.append(scores[k, c])
            keep_c.append(np.full(len(k), c))
        if keep_b:
            sel_boxes, sel_scores, sel_cls = np.concatenate(keep_b), np.concatenate(keep_s), np.concatenate(keep_c)
            top = np.argsort(-sel_scores, kind="stable")[:limit]
            sel_boxes, sel_scores, sel_cls = sel_boxes[top], sel_scores[top], sel_cls[top]
        else:
            sel_boxes, sel_scores, sel_cls = np.zeros((0, 4)), np.zeros(0), np.zeros(0, int)
    scale = np.array([width, height, width, height], np.float32)
    return Detections((sel_boxes * scale).astype(np.float32), sel_scores.astype(np.float32), (sel_cls + 1).astype(np.int64))


def preprocess(rgb: np.ndarray) -> np.ndarray:
    """RGB uint8 HxWx3 -> the ONNX input: [1, 300, 300, 3] float32, 0..255 (the graph normalises)."""
    image = MODEL_SPECS[DEFAULT_DETECTOR].photo_input()
    return image.tensor(image.resize(rgb))


class Detector:
    """Runs the detector ONNX; one instance per process is enough."""

    def __init__(self, model: Model | None = None, name: str = DEFAULT_DETECTOR, directory: Path | None = None):
        self.model = model or open_model(name, "detector", directory)

    def heads(self, rgb: np.ndarray) -> dict[str, np.ndarray]:
        """All ONNX outputs (heads and backbone maps F2, F3, F4) for one photo."""
        spec = self.model.spec
        image = spec.photo_input()
        x = image.tensor(image.resize(rgb))
        return dict(zip(spec.outputs, self.model.session.run(list(spec.outputs), {spec.inputs[0]: x})))

    def detect(self, rgb: np.ndarray, min_score: float = 0.3, limit: int = 100, class_agnostic: bool = False) -> Detections:
        """Objects in one RGB photo, best first."""
        h, w = rgb.shape[:2]
        return postprocess(self.heads(rgb), w, h, min_score=min_score, limit=limit, class_agnostic=class_agnostic)
