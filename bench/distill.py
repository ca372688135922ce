"""Distillation benchmark (the paper's Table 2): detector features, S1, S2, S3 and the teacher, side by side.

    python bench/distill.py --data ../shared/data --students oesir_cli/weights,/tmp/distill/students \
        --work /tmp/oesir-bench-distill

Every row uses the same boxes (the detector's, k = 8 class-agnostic + the whole
photo) and the same ROIAlign / PCA whitening (learned per row on
imagenet-sample/train) / Eq. 7 ranking; only the feature maps differ:

* detector features: the detector's own F4 (as stride 32) and F3 (as stride 16);
* S1, S2, S3: the students `oesir distill --variant s1|s2|s3` wrote
  (`student_<v>.onnx` in one of the --students folders), on the detector's
  maps (S2, S3) or its 300x300 image (S1);
* teacher: EfficientNet-Lite0 at 512 px, a second network pass;
* teacher at the view: the same teacher on the 320x320 view a student imitates
  (the photo squashed to VIEW_SIDE square): the best any student on the
  detector's 300x300 input can do, since that is all it is trained to reproduce.

Columns: multiply-accumulates and parameters of the embedding path (detector +
feature network, counted from the ONNX graphs' Conv/Gemm/MatMul nodes), and
host@1 / donor@10 of Eq. 7 (objects only, no local features) on casia-sir and
small-splice. A second table times each path alone (boxes + maps + ROIAlign)
on the same photos; run `--timing-only` on an idle machine for those figures.
Descriptors are cached per row in --work, so a row added later (e.g. a
student trained later) is computed without redoing the others.
"""

from __future__ import annotations

import argparse
import json
import pickle
import subprocess
import sys
import time
from pathlib import Path

import cv2
import numpy as np
import onnx
import onnxruntime as ort
from onnx import numpy_helper

from oesir_cli.codec import squared_l2
from oesir_cli.detector import Detector, postprocess
from oesir_cli.detector import preprocess as det_preprocess
from oesir_cli.embed import learn_whitening, region_descriptors
from oesir_cli.imageio import load_rgb
from oesir_cli.registry import VIEW_SIDE, session_options, verified_path
from oesir_cli.teacher import FeatureMaps, Teacher

SETS = ("casia-sir", "small-splice")
ROWS = ("detector features", "S1", "S2", "S3", "teacher at the view (320x320)", "teacher (two passes)")
VIEW_ROW = "teacher at the view (320x320)"


def macs_and_params(path: Path, shapes: dict[str, list[int]]) -> tuple[int, int]:
    """Multiply-accumulates of the Conv/Gemm/MatMul nodes for one input of `shapes`, and the parameter count.

    Output shapes come from running the graph once (every such node's output
    exposed), since shape inference cannot follow the dynamic padding of the
    teacher graph.
    """
    model = onnx.load(str(path))
    inits = {i.name: numpy_helper.to_array(i).shape for i in model.graph.initializer}
    nodes = [n for n in model.graph.node if n.op_type in ("Conv", "Gemm", "MatMul") and n.input[1] in inits]
    have = {o.name for o in model.graph.output}
    model.graph.output.extend([onnx.ValueInfoProto(name=n.output[0]) for n in nodes if n.output[0] not in have])
    sess = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    feeds = {}
    for i in sess.get_inputs():
        dims = shapes.get(i.name) or [d if isinstance(d, int) else 1 for d in i.shape]
        feeds[i.name] = np.random.default_rng(0).random(dims, dtype=np.float32) * 255
    names = [n.output[0] for n in nodes]
    outs = dict(zip(names, sess.run(names, feeds)))
    macs = 0
    for n in nodes:
        w = inits[n.input[1]]
        out = outs[n.output[0]].shape
        # Conv: output elements x (Cin/group x kh x kw); Gemm/MatMul: output elements x inner dimension
        macs += int(np.prod(out)) * (int(np.prod(w[1:])) if n.op_type == "Conv" else int(w[0]))
    return macs, sum(int(np.prod(s)) for s in inits.values())


def _slug(row: str) -> str:
    """A row's name in file names: its first word, and "teacher-view" for the view row (both start "teacher")."""
    return "teacher-view" if row == VIEW_ROW else row.split()[0]


def _session(path: Path) -> ort.InferenceSession:
    return ort.InferenceSession(str(path), sess_options=session_options(), providers=["CPUExecutionProvider"])


class Rows:
    """Feature maps of one photo for every row, from one detector pass (and the teacher's / students' passes)."""

    def __init__(self, students: dict[str, Path]):
        self.detector = Detector()
        self.teacher = Teacher()
        self.students = {v: _session(p) for v, p in students.items()}
        self.time = dict.fromkeys(ROWS, 0.0)

    def analyse(self, rgb: np.ndarray, only: set[str] | None = None) -> tuple[np.ndarray, dict[str, FeatureMaps]]:
        """Boxes and each row's maps; `only` limits which rows' maps are computed."""
        h, w = rgb.shape[:2]
        sx, sy = VIEW_SIDE / w, VIEW_SIDE / h
        t0 = time.perf_counter()
        x = det_preprocess(rgb)
        names = [o.name for o in self.detector.model.session.get_outputs()]
        heads = dict(zip(names, self.detector.model.session.run(None, {"image": x})))
        det = postprocess(heads, w, h, min_score=0.05, limit=8, class_agnostic=True)
        t_det = time.perf_counter() - t0
        boxes = np.concatenate([np.array([[0, 0, w, h]], np.float32), det.boxes])
        maps = {"detector features": FeatureMaps(heads["F3"][0].transpose(2, 0, 1), heads["F4"][0].transpose(2, 0, 1), sx, sy)}
        self.time["detector features"] += t_det
        feeds = {"s1": {"image": x}, "s2": {"F2": heads["F2"]}, "s3": {k: heads[k] for k in ("F2", "F3", "F4")}}
        for v, sess in self.students.items():
            if only and v.upper() not in only:
                continue
            t1 = time.perf_counter()
            s16, s32 = sess.run(["student_s16", "student_s32"], feeds[v])
            self.time[v.upper()] += t_det + time.perf_counter() - t1
            maps[v.upper()] = FeatureMaps(s16[0], s32[0], sx, sy)
        if not only or VIEW_ROW in only:
            t1 = time.perf_counter()
            view = cv2.resize(rgb, (VIEW_SIDE, VIEW_SIDE), interpolation=cv2.INTER_AREA)
            spec = self.teacher.model.spec
            s16, s32 = self.teacher.model.session.run(list(spec.outputs), {spec.inputs[0]: self.teacher.image.tensor(view)})
            maps[VIEW_ROW] = FeatureMaps(s16[0], s32[0], sx, sy)
            self.time[VIEW_ROW] += t_det + time.perf_counter() - t1
        if only and "teacher (two passes)" not in only:
            return boxes, maps
        t1 = time.perf_counter()
        maps["teacher (two passes)"] = self.teacher.features(rgb)
        self.time["teacher (two passes)"] += t_det + time.perf_counter() - t1
        return boxes, maps


def describe(rows: Rows, files: list[Path], tag: str, work: Path) -> dict[str, list[np.ndarray]]:
    """Region descriptors of every photo for every row; rows already computed in `work` are read back."""
    out: dict[str, list[np.ndarray]] = {}
    for r in ROWS:
        cached = work / f"desc-{_slug(r)}-{tag}.pkl"
        if cached.exists():
            out[r] = pickle.loads(cached.read_bytes())
    todo = {r for r in ROWS if r not in out}
    if not todo:
        return out
    fresh: dict[str, list[np.ndarray]] = {r: [] for r in todo}
    for i, f in enumerate(files):
        if i % 200 == 0:
            print(f"  {tag} {i}/{len(files)}", file=sys.stderr, flush=True)
        boxes, maps = rows.analyse(load_rgb(f), only=todo)
        for r in todo:
            t0 = time.perf_counter()
            fresh[r].append(region_descriptors(maps[r], boxes))
            rows.time[r] += time.perf_counter() - t0
    for r in todo:
        (work / f"desc-{_slug(r)}-{tag}.pkl").write_bytes(pickle.dumps(fresh[r]))
    return {**out, **fresh}


def timing_table(rows: Rows, data: Path, n: int) -> str:
    """Seconds per photo of each embedding path (boxes + maps + ROIAlign), each path run alone over the same photos."""
    db = sorted((data / "casia-sir" / "db").iterdir())[:n]
    photos = [load_rgb(f) for f in db]
    lines = ["| embedding path | s/photo | vs teacher |", "| --- | --- | --- |"]
    secs = {}
    for r in ROWS:
        rows.analyse(photos[0])  # warm-up
        t0 = time.perf_counter()
        for rgb in photos:
            boxes, maps = rows.analyse(rgb, only={r})
            region_descriptors(maps[r], boxes)
        secs[r] = (time.perf_counter() - t0) / len(photos)
    extra = {}
    try:  # the shipped S3 path: oesir_cli/weights/single_pass_s3.onnx, boxes + descriptors in one onnxruntime call
        from oesir_cli.single_pass import SinglePass

        single = SinglePass()
        single.objects(photos[0], 0.05, 8)
        t0 = time.perf_counter()
        for rgb in photos:
            single.objects(rgb, 0.05, 8)
        extra["S3 single pass (oesir_cli/weights/, one call)"] = (time.perf_counter() - t0) / len(photos)
    except Exception as exc:  # noqa: BLE001 - a bench row, not the product
        print(f"single-pass row skipped: {exc}", file=sys.stderr)
    for r, v in {**secs, **extra}.items():
        lines.append(f"| {r} | {v:.4f} | {v / secs['teacher (two passes)']:.2f} |")
    return "\n".join(lines) + f"\n\n({len(photos)} casia-sir database photos, each path run alone)"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--data", type=Path, default=Path("../shared/data"))
    ap.add_argument(
        "--students", required=True, help="comma-separated folders holding student_s1/s2/s3.onnx (oesir distill --out)"
    )
    ap.add_argument("--work", type=Path, default=Path("/tmp/oesir-bench-distill"))
    ap.add_argument("--timing-only", action="store_true", help="only time the embedding paths (run on an idle machine)")
    ap.add_argument("--timing-photos", type=int, default=200, help="database photos to time each path on")
    args = ap.parse_args()
    data = args.data.resolve()
    score_py = data.parent / "bench" / "score.py"
    args.work.mkdir(parents=True, exist_ok=True)
    students = {}
    for v in ("s1", "s2", "s3"):
        found = [Path(d) / f"student_{v}.onnx" for d in args.students.split(",") if (Path(d) / f"student_{v}.onnx").exists()]
        if found:
            students[v] = found[0]
        else:
            print(f"student_{v}.onnx not found in {args.students}: row left out", file=sys.stderr)
    global ROWS
    ROWS = tuple(r for r in ROWS if r not in ("S1", "S2", "S3") or r.lower() in students)
    rows = Rows(students)
    if args.timing_only:
        print(timing_table(rows, args.data.resolve(), args.timing_photos))
        return

    train = sorted((data / "imagenet-sample" / "train").iterdir())
    print("whitening photos", file=sys.stderr)
    train_desc = describe(rows, train, "train", args.work)
    whitening = {r: learn_whitening(np.concatenate(train_desc[r]), 256) for r in ROWS}

    db = sorted(p for d in (data / "casia-sir" / "db", data / "imagenet-sample" / "distractors") for p in d.iterdir())
    print("database photos", file=sys.stderr)
    db_desc = describe(rows, db, "db", args.work)
    db_emb = {r: whitening[r].apply(np.concatenate(db_desc[r])) for r in ROWS}
    owner = np.concatenate([np.full(len(d), i) for i, d in enumerate(db_desc[ROWS[0]])])

    results: dict[str, dict[str, dict]] = {r: {} for r in ROWS}
    for s in SETS:
        queries = sorted((data / s / "queries").iterdir())
        print(f"queries {s}", file=sys.stderr)
        q_desc = describe(rows, queries, s, args.work)
        for r in ROWS:
            path = args.work / f"{_slug(r)}-{s}.jsonl"
            with open(path, "w") as fh:
                for q, d in zip(queries, q_desc[r]):
                    dist = squared_l2(whitening[r].apply(d), db_emb[r]).min(0)  # per db object
                    best = np.full(len(db), np.inf)
                    np.minimum.at(best, owner, dist)  # Eq. 7: min over object pairs
                    order = np.argsort(best)[:100]
                    fh.write(json.dumps({"query": str(q), "matches": [{"image": str(db[i])} for i in order]}) + "\n")
            res = subprocess.run(
                [sys.executable, str(score_py), "retrieval", str(data / s / "truth.jsonl"), str(path)],
                capture_output=True,
                text=True,
                check=True,
            )
            results[r][s] = json.loads(res.stdout)["splice"]

    det_macs, det_params = macs_and_params(verified_path("ssd-mobilenet-v2-coco"), {"image": [1, 300, 300, 3]})
    cost = {"detector features": (det_macs, det_params)}
    for v in students:
        m, p = macs_and_params(students[v], {})
        cost[v.upper()] = (det_macs + m, det_params + p)
    t_macs, t_params = macs_and_params(verified_path("efficientnet-lite0"), {"image": [1, 3, 384, 512]})
    cost["teacher (two passes)"] = (det_macs + t_macs, det_params + t_params)
    v_macs, _ = macs_and_params(verified_path("efficientnet-lite0"), {"image": [1, 3, VIEW_SIDE, VIEW_SIDE]})
    cost[VIEW_ROW] = (det_macs + v_macs, det_params + t_params)

    teacher_macs = cost["teacher (two passes)"][0]
    print()
    print(
        "| embedding path | GMACs | params (M) | MACs vs teacher | "
        "casia-sir host@1 | casia-sir donor@10 | small-splice host@1 | small-splice donor@10 | "
        "donor@10 vs teacher (sir / small) |"
    )
    print("|" + " --- |" * 9)
    tr = results["teacher (two passes)"]
    for r in ROWS:
        m, p = cost[r]
        res = results[r]
        rel = " / ".join(f"{100 * res[s]['donor@10'] / max(tr[s]['donor@10'], 1e-9):.0f}%" for s in SETS)
        acc = " | ".join(str(res[s][k]) for s in SETS for k in ("host@1", "donor@10"))
        print(f"| {r} | {m / 1e9:.2f} | {p / 1e6:.1f} | {m / teacher_macs:.2f} | {acc} | {rel} |")
    print("\n(teacher MACs at 512x384, the shape of most database photos)\n")
    print(timing_table(rows, data, args.timing_photos))


if __name__ == "__main__":
    main()
