"""`oesir distill` smoke test on tiny generated photos: trains, exports, matches torch, resumes exactly."""

from __future__ import annotations

import json

import cv2
import numpy as np
import onnxruntime as ort
import pytest
import torch
from typer.testing import CliRunner

from oesir_cli.cli import app
from oesir_cli.detector import Detector, preprocess
from oesir_cli.distill.data import build_cache
from oesir_cli.distill.model import Student
from oesir_cli.distill.train import TrainConfig, train
from oesir_cli.registry import add_manifest_entry
from oesir_cli.single_pass import SinglePass
from oesir_cli.teacher import Teacher

from .conftest import synthetic_photo

runner = CliRunner()


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("distill")
    photos = root / "photos"
    photos.mkdir()
    for i in range(6):
        cv2.imwrite(str(photos / f"t{i}.jpg"), synthetic_photo(300 + i, (200, 160)))
    cache = build_cache(photos, root / "cache", crops_per_image=2, seed=0, detector=Detector(), teacher=Teacher())
    return root, photos, cache


def _rel(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12))


def test_cli_distill_exports_student_and_single_pass_graph_matching_torch(tiny, tmp_path):
    root, photos, _ = tiny
    out = tmp_path / "weights"
    args = ["distill", "--images", str(photos), "--out", str(out), "--cache-dir", str(tmp_path / "c")]
    r = runner.invoke(app, [*args, "--iterations", "3", "--batch", "4", "--crops", "2"])
    assert r.exit_code == 0, r.output
    manifest = json.loads((out / "manifest.json").read_text())
    assert set(manifest["files"]) == {"student_s3.onnx", "whitening_student_s3_320.npz"}
    assert "oesir distill" in manifest["files"]["student_s3.onnx"]["command"]

    state = torch.load(tmp_path / "c" / "student_s3.pt", weights_only=False)
    student = Student("s3")
    student.load_state_dict(state["model"])
    student.eval()
    rgb = cv2.cvtColor(synthetic_photo(999, (256, 192)), cv2.COLOR_BGR2RGB)
    heads = Detector().heads(rgb)
    with torch.no_grad():
        ref = [t.numpy() for t in student(*(torch.from_numpy(heads[k]) for k in ("F2", "F3", "F4")))]

    # the shipped path (detector and student chained) equals the torch student on the detector's own maps
    net = SinglePass(directory=out)
    got = net.outputs(rgb)
    assert _rel(got["student_s16"], ref[0]) < 1e-4
    assert _rel(got["student_s32"], ref[1]) < 1e-4
    det, maps = net.run(rgb, min_score=0.05, limit=8)
    assert maps.s32.shape == (1280, 10, 10) and maps.s16.shape == (112, 20, 20)

    # and so does the merged one-graph export, whose detector part is the detector
    merged = ort.InferenceSession(str(tmp_path / "c" / "single_pass_s3.onnx"), providers=["CPUExecutionProvider"])
    names = [o.name for o in merged.get_outputs()]
    one = dict(zip(names, merged.run(None, {"image": preprocess(rgb)})))
    assert _rel(one["student_s16"], ref[0]) < 1e-4
    assert _rel(one["student_s32"], ref[1]) < 1e-4
    for name in ("box_0", "cls_0", "box_5", "cls_5"):
        np.testing.assert_allclose(one[name], heads[name], rtol=1e-4, atol=1e-4)


def test_resume_continues_exactly(tiny, tmp_path):
    _, _, cache = tiny
    config = TrainConfig(iterations=8, batch=4, save_every=1, seed=3)
    full, losses_full = train(cache, config, tmp_path / "a.pt")

    class Stop(Exception):
        pass

    def stop_at_5(step: int, n: int, loss: float) -> None:
        if step == 5:
            raise Stop

    with pytest.raises(Stop):
        train(cache, config, tmp_path / "b.pt", progress=stop_at_5)
    assert torch.load(tmp_path / "b.pt", weights_only=False)["step"] == 4  # step 5 was not checkpointed
    resumed, losses_rest = train(cache, config, tmp_path / "b.pt", resume=True)
    assert len(losses_rest) == 4
    assert losses_rest == pytest.approx(losses_full[4:], rel=1e-5)
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)
    with pytest.raises(ValueError, match="other settings"):
        train(cache, TrainConfig(iterations=9, batch=4, save_every=1, seed=3), tmp_path / "b.pt", resume=True)


def test_training_lowers_the_loss(tiny, tmp_path):
    _, _, cache = tiny
    _, losses = train(cache, TrainConfig(iterations=30, batch=4, lr=2e-3), tmp_path / "c.pt")
    assert np.mean(losses[-5:]) < 0.7 * np.mean(losses[:3])


@pytest.mark.parametrize("variant", ["s1", "s2", "s3"])
def test_variants_read_what_the_paper_says(variant):
    s = Student(variant)
    assert s.inputs() == {"s1": ("image",), "s2": ("F2",), "s3": ("F2", "F3", "F4")}[variant]
    assert hasattr(s, "from_f3") == (variant == "s3")


def test_manifest_entry_is_atomic_and_hashed(tmp_path):
    f = tmp_path / "x.bin"
    f.write_bytes(b"abc")
    entry = add_manifest_entry(f, {"model": "x"})
    assert entry["sha256"].startswith("ba7816bf") and entry["bytes"] == 3
    assert not list(tmp_path.glob(".*.tmp"))
