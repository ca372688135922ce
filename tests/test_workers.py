"""Describing photos in worker processes (workers.py): same descriptions, and Ctrl-C keeps what was committed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from oesir_cli import api
from oesir_cli.cli import app
from oesir_cli.errors import StoreError
from oesir_cli.imageio import DEFAULT_MAX_PIXELS
from oesir_cli.indexer import local_describer
from oesir_cli.store import ImageRecord, Store
from oesir_cli.workers import POOL_MIN_PHOTOS, pool_describer

from .test_faults import _small_photos

runner = CliRunner()
OESIR = [sys.executable, "-c", "from oesir_cli.cli import main; main()"]


def _records(folder: Path) -> list[ImageRecord]:
    return [ImageRecord(i, str(p), "", 0, 0, 0, 0) for i, p in enumerate(sorted(folder.iterdir()))]


def test_worker_processes_describe_photos_as_this_process_does(tmp_path):
    photos = _small_photos(tmp_path / "photos", 6)
    (photos / "broken.jpg").write_bytes(b"not a photo")
    records = _records(photos)
    eng = api.engine()
    here = {d.record.path: d for d in local_describer(eng, DEFAULT_MAX_PIXELS)(records)}
    pooled = list(pool_describer(eng, DEFAULT_MAX_PIXELS, workers=2, min_photos=1)(records))
    assert sorted(d.record.path for d in pooled) == sorted(here)  # each photo once, in any order
    for d in pooled:
        ref = here[d.record.path]
        assert (d.record.width, d.record.height, d.error) == (ref.record.width, ref.record.height, ref.error)
        if ref.data is None:
            assert d.data is None and "broken.jpg" in d.record.path
            continue
        np.testing.assert_array_equal(d.data.keypoints, ref.data.keypoints)  # SIFT is deterministic
        np.testing.assert_array_equal(d.data.descriptors, ref.data.descriptors)
        np.testing.assert_allclose(d.data.boxes, ref.data.boxes, atol=1e-3)  # one onnxruntime thread, not two
        np.testing.assert_allclose(d.data.embeddings, ref.data.embeddings, atol=1e-4)


def test_workers_option_is_checked_as_usage(tmp_path):
    photos = _small_photos(tmp_path / "photos", 1)
    for args, message in (
        (["--workers", "0"], "--workers must be at least 1"),
        (["--workers", "2", "--ray", "local"], "--workers and --ray are alternatives"),
    ):
        r = runner.invoke(app, ["index", str(photos), "--index", str(tmp_path / "idx"), *args])
        assert r.exit_code == 2 and message in r.stderr and len(r.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "idx" / "oesir.sqlite").exists()


def test_ctrl_c_stops_the_workers_and_keeps_every_committed_batch(tmp_path):
    """Ctrl-C in a terminal reaches the whole process group: the parent stops, the workers with it."""
    n = POOL_MIN_PHOTOS + 16
    photos = _small_photos(tmp_path / "photos", n)
    idx = tmp_path / "idx"
    proc = subprocess.Popen(
        [*OESIR, "index", str(photos), "--index", str(idx), "--workers", "2"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,
        # as in a terminal: a test run started in the background (`make test &`) inherits SIGINT ignored,
        # and Python then never turns Ctrl-C into KeyboardInterrupt
        preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL),
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None:  # interrupt once some batches are committed
        if (idx / "oesir.sqlite").exists() and _photos_in(idx) >= 16:
            break
        time.sleep(0.2)
    assert proc.poll() is None, "indexing finished before it could be interrupted"
    os.killpg(proc.pid, signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert "Traceback" not in stderr and "interrupted" in stderr
    for _ in range(50):  # the workers go with the parent
        try:
            os.killpg(proc.pid, 0)
        except ProcessLookupError:
            break
        time.sleep(0.1)
    else:
        pytest.fail("worker processes outlived the interrupted index")
    kept = _photos_in(idx)
    assert 16 <= kept < n
    r = subprocess.run([*OESIR, "index", str(photos), "--index", str(idx), "--json"], capture_output=True, text=True)
    assert r.returncode == 0, r.stderr
    assert _photos_in(idx) == n
    r = subprocess.run([*OESIR, "check", "--index", str(idx)], capture_output=True, text=True)
    assert r.returncode == 0, r.stdout + r.stderr


def _photos_in(idx: Path) -> int:
    """Photos committed so far; 0 while the writer has created the database file but not yet its tables."""
    try:
        store = Store(idx)
    except StoreError as exc:
        assert "being created" in str(exc), exc
        return 0
    try:
        return len(store.images())
    finally:
        store.close()


def test_workers_exit_when_their_parent_is_killed(tmp_path):
    photos = _small_photos(tmp_path / "photos", POOL_MIN_PHOTOS + 16)
    idx = tmp_path / "idx"
    proc = subprocess.Popen(
        [*OESIR, "index", str(photos), "--index", str(idx), "--workers", "2"],
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and proc.poll() is None and len(_group(proc.pid)) < 3:
        time.sleep(0.2)  # the parent and its two workers
    assert proc.poll() is None and len(_group(proc.pid)) >= 3
    proc.kill()  # SIGKILL to the parent alone, as the OOM killer does
    proc.wait()
    for _ in range(100):
        if not _group(proc.pid):
            break
        time.sleep(0.1)
    else:
        pytest.fail(f"workers outlived their killed parent: {_group(proc.pid)}")


def _group(pgid: int) -> list[int]:
    """Live (not zombie) processes of process group `pgid`."""
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                fields = (d / "stat").read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[2]) == pgid and fields[0] != "Z":
                out.append(int(d.name))
    return out
