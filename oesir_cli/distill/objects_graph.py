"""ONNX nodes that finish the single-pass graph: heads -> boxes, student maps -> object descriptors.

Appended after the detector + student graph by `export.build_single_pass`, so one
onnxruntime call maps a photo to boxes, scores, classes and one descriptor per box.
Each step is the ONNX twin of a numpy function the teacher path runs, and the tests
hold them equal:
- `detector.postprocess(..., class_agnostic=True)`: SSD box decoding against the same
  anchors, sigmoid scores, best class per anchor, NonMaxSuppression (`detector.NMS_IOU`) keeping
  at most `max_objects` boxes with score >= `min_score` (both graph inputs), best first;
  the whole photo is prepended as box 0 (score 1, class 0), as `engine._whole_first` does;
- `embed.region_descriptors`: max over bilinear samples of each map inside each box, per
  map L2-normalised, s32 then s16. ONNX `RoiAlign` is not used for this: in max mode the
  ONNX specification (and onnxruntime's CPU kernel) takes the max of the four weighted
  corner values of each sample, not of the interpolated value (onnx/onnx#4764,
  microsoft/onnxruntime#6146), which is not the ROIAlign the embeddings were learned
  with; the samples are gathered from the flattened map instead (opset 13, like the
  detector), sample grids as in `embed.roi_align_max`.
Boxes leave the graph normalised to the photo's sides (x1, y1, x2, y2 in 0..1).
"""

from __future__ import annotations

import numpy as np

from ..detector import GRID, NMS_IOU, SCALE_FACTORS, ssd_anchors
from ..embed import ROI_MAX_SAMPLES
from ..registry import OBJECT_OUTPUTS, STUDENT_MAPS, VIEW_SIDE

# (map, stride, channels) in descriptor order: the s32 part, then s16, as `embed.region_descriptors`
MAPS = tuple((m.name, m.stride, m.shape[0]) for m in sorted(STUDENT_MAPS, key=lambda m: -m.stride))


class Nodes:
    """Collects nodes and constants with unique names."""

    def __init__(self, prefix: str):
        from onnx import helper, numpy_helper

        self.helper, self.numpy_helper = helper, numpy_helper
        self.prefix, self.n = prefix, 0
        self.nodes: list = []
        self.inits: list = []

    def name(self, hint: str) -> str:
        self.n += 1
        return f"{self.prefix}{hint}_{self.n}"

    def const(self, value: np.ndarray | float | int | list, dtype=np.float32) -> str:
        name = self.name("const")
        self.inits.append(self.numpy_helper.from_array(np.asarray(value, dtype), name))
        return name

    def op(self, op_type: str, inputs: list[str], hint: str = "", n_out: int = 1, **attrs) -> str | list[str]:
        outs = [self.name(hint or op_type.lower()) for _ in range(n_out)]
        self.nodes.append(self.helper.make_node(op_type, inputs, outs, name=self.name(op_type), **attrs))
        return outs[0] if n_out == 1 else outs


def objects_nodes(g: Nodes, max_objects: str, min_score: str) -> dict[str, str]:
    """Add the nodes; returns output name -> tensor name."""
    f = np.float32
    enc = g.op("Concat", [g.op("Reshape", [f"box_{i}", g.const([-1, 4], np.int64)]) for i in range(len(GRID))], axis=0)
    logits = g.op("Concat", [g.op("Reshape", [f"cls_{i}", g.const([-1, 91], np.int64)]) for i in range(len(GRID))], axis=0)
    # decode (cy, cx, h, w anchors; ty, tx, th, tw codes) -> (y1, x1, y2, x2), clipped to the photo
    anchors = ssd_anchors()
    t = g.op("Div", [enc, g.const(np.asarray(SCALE_FACTORS, f))])
    t_yx = g.op("Slice", [t, g.const([0], np.int64), g.const([2], np.int64), g.const([1], np.int64)])
    t_hw = g.op("Slice", [t, g.const([2], np.int64), g.const([4], np.int64), g.const([1], np.int64)])
    a_yx, a_hw = g.const(anchors[:, :2]), g.const(anchors[:, 2:])
    centre = g.op("Add", [g.op("Mul", [t_yx, a_hw]), a_yx])
    half = g.op("Div", [g.op("Mul", [g.op("Exp", [t_hw]), a_hw]), g.const(2.0)])
    corners = g.op("Concat", [g.op("Sub", [centre, half]), g.op("Add", [centre, half])], axis=1)
    yxyx = g.op("Clip", [corners, g.const(0.0), g.const(1.0)])
    xyxy = g.op("Gather", [yxyx, g.const([1, 0, 3, 2], np.int64)], axis=1)
    # class-agnostic scores: best non-background class per anchor
    probs = g.op("Sigmoid", [g.op("Slice", [logits, g.const([1], np.int64), g.const([91], np.int64), g.const([1], np.int64)])])
    best = g.op("ReduceMax", [probs], axes=[1], keepdims=0)
    cls = g.op("ArgMax", [probs], axis=1, keepdims=0)
    keep = g.op(
        "NonMaxSuppression",
        [
            g.op("Unsqueeze", [yxyx, g.const([0], np.int64)]),
            g.op("Unsqueeze", [best, g.const([0, 1], np.int64)]),
            max_objects,
            g.const([NMS_IOU]),
            min_score,
        ],
    )
    idx = g.op("Squeeze", [_column(g, keep, 2), g.const([1], np.int64)])  # (batch, class, box) -> box
    boxes = g.op("Concat", [g.const([[0.0, 0.0, 1.0, 1.0]]), g.op("Gather", [xyxy, idx], axis=0)], axis=0, hint="boxes")
    scores = g.op("Concat", [g.const([1.0]), g.op("Gather", [best, idx], axis=0)], axis=0)
    coco = g.op("Add", [g.op("Gather", [cls, idx], axis=0), g.const(1, np.int64)])
    classes = g.op("Concat", [g.const([0], np.int64), coco], axis=0)
    parts = [_l2(g, _roi_max(g, name, boxes, stride, channels)) for name, stride, channels in MAPS]
    descriptors = g.op("Concat", parts, axis=1)
    return dict(zip(OBJECT_OUTPUTS, (boxes, scores, classes, descriptors)))


def _sample_positions(g: Nodes, lo: str, hi: str, size: int) -> str:
    """[K, S] sample coordinates (map cells) of `embed.roi_align_max` along one axis; the
    n = clip(ceil(hi - lo), 2, S) samples of a box are padded to S by repeating the last.
    S = min(ROI_MAX_SAMPLES, size): a box inside the map spans at most `size` cells."""
    s = min(ROI_MAX_SAMPLES, size)
    span = g.op("Sub", [hi, lo])
    n = g.op("Clip", [g.op("Ceil", [span]), g.const(2.0), g.const(float(ROI_MAX_SAMPLES))])
    j = g.op("Min", [g.const(np.arange(s, dtype=np.float32)[None]), g.op("Sub", [n, g.const(1.0)])])
    step = g.op("Div", [span, n])
    pos = g.op("Sub", [g.op("Add", [lo, g.op("Mul", [g.op("Add", [j, g.const(0.5)]), step])]), g.const(0.5)])
    return g.op("Clip", [pos, g.const(0.0), g.const(float(size - 1))])


def _roi_max(g: Nodes, fmap: str, boxes: str, stride: int, channels: int) -> str:
    """[K, C]: per box, the max over its bilinear samples of `fmap` [1, C, H, W] (H = W = VIEW_SIDE / stride: the
    student's maps are the teacher's of a square view of that side)."""
    size = VIEW_SIDE // stride
    s = min(ROI_MAX_SAMPLES, size)
    cells = g.op("Mul", [boxes, g.const(VIEW_SIDE / stride)])  # normalised -> map cells
    col = [_column(g, cells, i) for i in range(4)]
    gx = g.op("Unsqueeze", [_sample_positions(g, col[0], col[2], size), g.const([1], np.int64)])  # [K, 1, S]
    gy = g.op("Unsqueeze", [_sample_positions(g, col[1], col[3], size), g.const([2], np.int64)])  # [K, S, 1]
    x0, y0 = g.op("Floor", [gx]), g.op("Floor", [gy])
    fx, fy = g.op("Sub", [gx, x0]), g.op("Sub", [gy, y0])
    last, one = g.const(float(size - 1)), g.const(1.0)
    x1, y1 = g.op("Min", [g.op("Add", [x0, one]), last]), g.op("Min", [g.op("Add", [y0, one]), last])
    ux, uy = g.op("Sub", [one, fx]), g.op("Sub", [one, fy])
    # map as rows of channels [H*W, C]: each sample gathers contiguous rows
    rows = g.op("Transpose", [g.op("Reshape", [fmap, g.const([channels, size * size], np.int64)])], perm=[1, 0])
    width = g.const(float(size))
    corners = ((y0, x0, uy, ux), (y0, x1, uy, fx), (y1, x0, fy, ux), (y1, x1, fy, fx))
    total = None
    for yy, xx, wy, wx in corners:
        flat = g.op("Reshape", [g.op("Add", [g.op("Mul", [yy, width]), xx]), g.const([-1], np.int64)])
        weight = g.op("Reshape", [g.op("Mul", [wy, wx]), g.const([-1, 1], np.int64)])  # [K*S*S, 1]
        term = g.op("Mul", [g.op("Gather", [rows, g.op("Cast", [flat], to=7)], axis=0), weight])  # [K*S*S, C]
        total = term if total is None else g.op("Add", [total, term])
    per_box = g.op("Reshape", [total, g.const([-1, s * s, channels], np.int64)])
    return g.op("ReduceMax", [per_box], axes=[1], keepdims=0)


def _column(g: Nodes, x: str, i: int) -> str:
    """[K, 1]: column i of [K, N]."""
    return g.op("Slice", [x, g.const([i], np.int64), g.const([i + 1], np.int64), g.const([1], np.int64)])


def _l2(g: Nodes, x: str) -> str:
    norm = g.op("ReduceL2", [x], axes=[1], keepdims=1)
    return g.op("Div", [x, g.op("Max", [norm, g.const(1e-12)])])
