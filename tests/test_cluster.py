"""Beyond one machine: Ray extraction and the Milvus back end, on real components.

Milvus Lite runs embedded (`milvus-lite:FILE.db`) and served on a local port
(`milvus://127.0.0.1:PORT/NAME`); Ray runs as a local cluster started for the
run (`--ray local`) and as two nodes started with `ray start`. Needs the
`cluster` extra (part of `test`).
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import cv2
import pytest
from typer.testing import CliRunner

from oesir_cli import api
from oesir_cli.cli import app
from oesir_cli.location import parse_location

from .conftest import EXAMPLES, replaced_model_is_used_then_restamped, synthetic_photo

pytest.importorskip("pymilvus")
pytest.importorskip("ray")

runner = CliRunner()
BIN = Path(sys.executable).parent
OESIR = str(BIN / "oesir")
RAY = str(BIN / "ray")
SPLICED = EXAMPLES.parent / "spliced.jpg"
# (donor, crop x1, y1, x2, y2, host, paste x1, y1, x2, y2): generated splices of the indexed photos
SPLICES = (
    ("coffee.jpg", 165, 10, 415, 260, "astronaut.jpg", 300, 120, 460, 280),
    ("chelsea.jpg", 150, 40, 350, 260, "coffee.jpg", 40, 60, 220, 260),
    ("astronaut.jpg", 150, 20, 330, 220, "rocket.jpg", 380, 80, 520, 240),
    ("synthetic_1.png", 40, 40, 200, 200, "chelsea.jpg", 250, 60, 390, 200),
)


def _photos(folder: Path, synthetic: int = 4) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for p in EXAMPLES.iterdir():
        shutil.copy(p, folder / p.name)
    for i in range(synthetic):
        cv2.imwrite(str(folder / f"synthetic_{i}.png"), synthetic_photo(i, (360, 280)))
    return folder


def _splices(photos: Path, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    made = []
    for n, (donor, a, b, c, d, host, x1, y1, x2, y2) in enumerate(SPLICES):
        q = cv2.imread(str(photos / host))
        q[y1:y2, x1:x2] = cv2.resize(cv2.imread(str(photos / donor))[b:d, a:c], (x2 - x1, y2 - y1))
        path = out / f"splice_{n}.jpg"
        cv2.imwrite(str(path), q, [cv2.IMWRITE_JPEG_QUALITY, 90])
        made.append(path)
    return [*made, SPLICED]


def _ranked(index: str, queries: list[Path]) -> list[list[tuple[str, str, float]]]:
    searcher = api.open_searcher(index)
    out = []
    try:
        for q in queries:
            result = api.search_file(searcher, q, top=10)
            out.append([(Path(m.image).name, m.role.value, m.distance) for m in result.matches])
    finally:
        searcher.close()  # a Milvus Lite file is open to one process at a time
    return out


def _same_rankings(a: list, b: list) -> None:
    """Same photos in the same order with the same roles; Eq. 7 distances equal up to the embedded index's
    float16 storage (Milvus stores float32)."""
    for ra, rb in zip(a, b, strict=True):
        assert [(n, r) for n, r, _ in ra] == [(n, r) for n, r, _ in rb]
        for (_, _, da), (_, _, db) in zip(ra, rb):
            assert da == pytest.approx(db, abs=5e-3)


def _oesir(*args: str, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    return subprocess.run([OESIR, *args], capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def collection(tmp_path_factory):
    """Photos, generated splices, the local index and the same photos indexed through Ray into Milvus Lite."""
    root = tmp_path_factory.mktemp("cluster")
    photos = _photos(root / "photos")
    queries = _splices(photos, root / "queries")
    local = str(root / "local-index")
    api.index([photos], index_dir=local)
    milvus = f"milvus-lite:{root / 'milvus.db'}"
    run = _oesir("index", str(photos), "--index", milvus, "--ray", "local", "--json")
    assert run.returncode == 0, run.stderr
    return {"root": root, "photos": photos, "queries": queries, "local": local, "milvus": milvus}


def test_ray_into_milvus_lite_ranks_as_the_local_index(collection):
    local = _ranked(collection["local"], collection["queries"])
    milvus = _ranked(collection["milvus"], collection["queries"])
    _same_rankings(local, milvus)
    roles = {n: r for n, r, _ in milvus[0]}
    assert roles["astronaut.jpg"] == "host" and roles["coffee.jpg"] == "donor"


def _neighbours(searcher, query: Path) -> list[tuple]:
    """Every stored keypoint the query's keypoints meet: (query keypoint, photo name, distance, position), sorted."""
    from oesir_cli.imageio import load_rgb
    from oesir_cli.keypoints import extract

    found = searcher.photos.probe(extract(load_rgb(query), searcher.params.query_keypoints), 5, 3)
    names = [Path(p).name for p in searcher.catalogue.paths]
    rows = zip(found.q.tolist(), found.photo.tolist(), found.dist.tolist(), found.xy.tolist())
    return sorted((q, names[p], round(d, 5), tuple(xy)) for q, p, d, xy in rows)


def test_milvus_lists_give_a_query_the_neighbours_of_the_local_index(collection):
    """The same stored keypoints, at the same distances: Milvus holds the embedded index's lists."""
    local, milvus = api.open_searcher(collection["local"]), api.open_searcher(collection["milvus"])
    try:
        for query in collection["queries"][:2]:
            mine = _neighbours(milvus, query)
            assert len(mine) > 1000 and mine == _neighbours(local, query)
    finally:
        local.close()
        milvus.close()


def test_milvus_segments_merge_and_dead_entries_go(tmp_path, monkeypatch):
    """Batches become segments, FANOUT of a level merge into one; a rewritten or removed photo's entries are dead
    (never searched) and dropped by the next merge; the content is that of an index written in one go."""
    from oesir_cli import indexer, milvus_store
    from oesir_cli.milvus_store import MilvusStore

    photos = _photos(tmp_path / "photos", synthetic=2)  # 6 photos
    monkeypatch.setattr(indexer, "BATCH", 1)
    monkeypatch.setattr(milvus_store, "FANOUT", 2)
    where = f"milvus-lite:{tmp_path / 'm.db'}"
    api.index([photos], index_dir=where)

    def state() -> tuple[list, list, int]:
        store = MilvusStore(parse_location(where))
        try:
            return store.segments(), store.content(), len(store._read_rows(""))
        finally:
            store.close()

    segments, content, stored = state()
    assert [level for _, level in segments] == [2, 1]  # 6 batches: 4 -> one of level 2, 2 -> one of level 1
    assert stored == sum(c[6] for c in content), "merged, nothing stored twice"
    cv2.imwrite(str(photos / "synthetic_0.png"), synthetic_photo(50, (360, 280)))  # a photo rewritten
    os.remove(photos / "rocket.jpg")  # and one removed
    api.index([photos], index_dir=where)
    segments, content, stored = state()
    assert stored > sum(c[6] for c in content), "the old writing's entries stay until a merge"
    reference = f"milvus-lite:{tmp_path / 'ref.db'}"
    monkeypatch.setattr(indexer, "BATCH", 16)
    api.index([photos], index_dir=reference)
    assert content == _content(reference)
    assert api.check(where).notes == []
    for name in ("coffee.jpg", "rocket.jpg"):  # [2, 1, 0] + 0: merges cascade to [3]; then [3, 0]
        shutil.copy(EXAMPLES / name, photos / f"again_{name}")
        api.index([photos], index_dir=where)
    segments, content, stored = state()
    assert [level for _, level in segments] == [3, 0]
    assert stored == sum(c[6] for c in content), "merging dropped the dead entries"
    api.index([photos], index_dir=reference)
    assert content == _content(reference)
    merged, whole = api.open_searcher(where), api.open_searcher(reference)
    try:  # dead entries are never searched: the same neighbours as the index written in one go
        assert _neighbours(merged, SPLICED) == _neighbours(whole, SPLICED)
    finally:
        merged.close()
        whole.close()


def _index_crashing(monkeypatch, method: str, crashing, photos: Path, where: str) -> None:
    """`oesir index` with `MilvusStore.<method>` replaced by `crashing` (which raises KeyboardInterrupt), restored after."""
    from oesir_cli.milvus_store import MilvusStore

    real = getattr(MilvusStore, method)
    monkeypatch.setattr(MilvusStore, method, crashing)
    with pytest.raises(KeyboardInterrupt):
        api.index([photos], index_dir=where)
    monkeypatch.setattr(MilvusStore, method, real)


def test_interrupted_merge_leaves_the_index_whole_and_check_repairs_it(tmp_path, monkeypatch):
    from oesir_cli import indexer, milvus_store
    from oesir_cli.milvus_store import MilvusStore

    photos = _photos(tmp_path / "photos", synthetic=0)  # 4 photos
    monkeypatch.setattr(indexer, "BATCH", 1)
    monkeypatch.setattr(milvus_store, "FANOUT", 4)
    where = f"milvus-lite:{tmp_path / 'm.db'}"
    real = MilvusStore._set_segments

    def crash_when_merged(self, segments):  # the merged segment is written, the live set not yet changed
        if any(level > 0 for _, level in segments):
            raise KeyboardInterrupt
        real(self, segments)

    _index_crashing(monkeypatch, "_set_segments", crash_when_merged, photos, where)
    report = api.check(where)
    assert report.photos == 4 and any("owned by no visible photo" in n for n in report.notes)
    before = _content(where)
    assert len(before) == 4 and all(c[9] for c in before), "every photo's keypoints still live, none twice"
    fixed = api.check(where, repair=True)
    assert fixed.repaired and api.check(where).notes == [] and _content(where) == before


def test_an_index_of_the_older_layout_is_refused_until_rebuilt(tmp_path):
    from oesir_cli.errors import StoreError
    from oesir_cli.milvus_store import MilvusStore

    photos = tmp_path / "photos"
    photos.mkdir()
    shutil.copy(EXAMPLES / "coffee.jpg", photos / "coffee.jpg")
    where = f"milvus-lite:{tmp_path / 'm.db'}"
    api.index([photos], index_dir=where)
    store = MilvusStore(parse_location(where))
    store.client.drop_collection(store._c("lists"))  # what an index written before the lists looks like
    store.close()
    for action in (lambda: api.info(where), lambda: api.open_searcher(where), lambda: api.index([photos], index_dir=where)):
        with pytest.raises(StoreError, match=r"older oesir .* --rebuild"):
            action()
    assert api.index([photos], index_dir=where, rebuild=True).added == 1
    assert api.check(where).notes == [] and api.info(where)["photos"] == 1


def test_a_milvus_index_made_with_a_replaced_model_file_is_used_then_restamped_and_others_are_refused(tmp_path):
    """As for the embedded index (tests/test_api.py)."""
    from oesir_cli.milvus_store import MilvusStore

    where = f"milvus-lite:{tmp_path / 'm.db'}"

    def stamp(version: str | None) -> str | None:
        store = MilvusStore(parse_location(where))
        try:
            if version is not None:
                store.set_meta("model_version", version)
            return store.meta("model_version")
        finally:
            store.close()

    replaced_model_is_used_then_restamped(where, stamp)


def test_a_run_killed_while_creating_the_collections_is_finished_by_a_rerun(tmp_path, monkeypatch):
    from oesir_cli.milvus_store import MilvusStore

    photos = _photos(tmp_path / "photos", synthetic=0)
    where = f"milvus-lite:{tmp_path / 'm.db'}"
    real = MilvusStore.create

    def killed_before_meta(self, *args, **kwargs):  # the data collections made, meta (made last) not yet
        real(self, *args, **kwargs)
        self.client.drop_collection(self._c("meta"))
        raise KeyboardInterrupt

    _index_crashing(monkeypatch, "create", killed_before_meta, photos, where)
    # killed inside Milvus Lite's own creation of meta: its folder written, the collection not listed
    (tmp_path / "m.db" / "collections" / "oesir_meta" / "wal").mkdir(parents=True)
    done = _oesir("index", str(photos), "--index", where, "--json")  # a new process finds the collections released
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["added"] == 4 and api.check(where).notes == []


def test_milvus_index_reports_and_checks_like_the_local_one(collection):
    local, milvus = api.info(collection["local"]), api.info(collection["milvus"])
    assert (milvus["photos"], milvus["objects"]) == (local["photos"], local["objects"])
    assert milvus["format"] == "milvus" and milvus["local_features"]
    report = api.check(collection["milvus"])
    assert report.ok and report.notes == [] and report.photos == local["photos"]
    again = _oesir("index", str(collection["photos"]), "--index", collection["milvus"], "--json")
    assert again.returncode == 0 and '"unchanged": 8' in again.stdout and '"added": 0' in again.stdout


def test_localize_auto_and_report_work_against_milvus(collection, tmp_path):
    query = collection["queries"][0]
    r = runner.invoke(app, ["localize", str(query), "--auto", "--index", collection["milvus"], "--json"])
    assert r.exit_code == 0, r.output
    assert '"role": "host"' in r.stdout and "astronaut.jpg" in r.stdout and '"role": "donor"' in r.stdout
    summary = api.report([query], tmp_path / "case", index_dir=collection["milvus"])
    assert summary.suspects[0].verdict == "sources"
    assert collection["milvus"] in (tmp_path / "case" / "001-splice_0.html").read_text()


def test_nothing_imports_ray_or_pymilvus_without_them(tmp_path):
    code = (
        "import sys; from oesir_cli import api; "
        f"api.index([{str(EXAMPLES)!r}], index_dir={str(tmp_path / 'idx')!r}); "
        f"api.search_file(api.open_searcher({str(tmp_path / 'idx')!r}), {str(SPLICED)!r}); "
        "print(sorted(m for m in ('ray', 'pymilvus', 'milvus_lite') if m in sys.modules))"
    )
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    assert run.stdout.strip() == "[]"


def test_unreachable_cluster_and_bad_locations_are_one_line_errors(tmp_path):
    run = _oesir("index", str(EXAMPLES), "--index", str(tmp_path / "idx"), "--ray", f"127.0.0.1:{_free_port()}", timeout=60)
    assert run.returncode == 1 and "cannot join the Ray cluster" in run.stderr and "Traceback" not in run.stderr
    for where, says in (
        ("milvus-lite:/tmp/x.sqlite", "ends in .db"),
        ("milvus://host:1/bad-name", "NAME must be"),
        ("s3://bucket/x", "unknown index location"),
    ):
        r = runner.invoke(app, ["search", str(SPLICED), "--index", where])
        assert r.exit_code == 1 and says in r.stderr, (where, r.stderr)
    r = runner.invoke(app, ["search", str(SPLICED), "--index", f"milvus://127.0.0.1:{_free_port()}/case"])
    assert r.exit_code == 1 and "cannot reach Milvus" in r.stderr


def test_interrupted_milvus_write_is_seen_by_check_and_finished_by_a_rerun(tmp_path, monkeypatch):
    """A crash between a batch's rows and the photo rows that make it visible: hidden, noted, repaired, redone."""
    from oesir_cli.milvus_store import MilvusStore

    photos = _photos(tmp_path / "photos", synthetic=0)
    where = f"milvus-lite:{tmp_path / 'm.db'}"
    real = MilvusStore.commit

    def crash_before_showing(self, batch):  # write the rows, never flip the photos to visible
        upsert = self.client.upsert
        calls = []

        def counted(name, rows):
            calls.append(name)
            if name.endswith("_photos") and calls.count(name) == 2:
                raise KeyboardInterrupt
            return upsert(name, rows)

        self.client.upsert = counted
        try:
            real(self, batch)
        finally:
            self.client.upsert = upsert

    _index_crashing(monkeypatch, "commit", crash_before_showing, photos, where)
    report = api.check(where)
    assert report.photos == 0 and any("hidden by an interrupted write" in n for n in report.notes)
    assert any("owned by no visible photo" in n for n in report.notes)
    searcher = api.open_searcher(where)
    assert searcher.photos.count == 0, "nothing half-written is searchable"
    searcher.close()
    summary = api.index([photos], index_dir=where)
    assert summary.added == 4 and api.check(where).notes == [], "a re-run rewrites the hidden photos, leaving nothing stray"
    reference = f"milvus-lite:{tmp_path / 'ref.db'}"
    api.index([photos], index_dir=reference)
    assert _content(where) == _content(reference)


def test_one_writer_at_a_time_on_a_milvus_index(tmp_path):
    from oesir_cli.errors import StoreError
    from oesir_cli.milvus_store import WRITER_KEY, WRITER_LEASE_S, MilvusStore

    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("coffee.jpg", "rocket.jpg"):
        shutil.copy(EXAMPLES / name, photos / name)
    where = f"milvus-lite:{tmp_path / 'm.db'}"
    api.index([photos], index_dir=where)

    def hold(pid: int, renewed: float) -> None:
        store = MilvusStore(parse_location(where))
        try:
            lease = {"owner": "elsewhere", "host": socket.gethostname(), "pid": pid, "since": renewed, "renewed": renewed}
            store.set_meta(WRITER_KEY, json.dumps(lease))
        finally:
            store.close()

    other = subprocess.Popen(["sleep", "120"])  # stands for a live `oesir index` of this index
    try:
        shutil.copy(EXAMPLES / "chelsea.jpg", photos / "chelsea.jpg")
        hold(other.pid, time.time())
        with pytest.raises(StoreError, match=rf"being written by another oesir \(pid {other.pid} on "):
            api.index([photos], index_dir=where)
        with pytest.raises(StoreError, match="being written by another oesir"):
            api.check(where, repair=True)
        assert any("being written now" in n for n in api.check(where).notes)
        assert api.info(where)["photos"] == 2, "the refused writer wrote nothing"
        hold(other.pid, time.time() - WRITER_LEASE_S - 1)  # silent for longer than the lease: taken for dead
        assert api.index([photos], index_dir=where).added == 1
        os.remove(photos / "chelsea.jpg")
        hold(other.pid, time.time())
    finally:
        other.kill()
        other.wait()
    summary = api.index([photos], index_dir=where)  # its process is gone: the lease is taken over at once
    assert summary.removed == 1 and api.check(where).notes == [], "the lease is released when the writer ends"
    store = MilvusStore(parse_location(where))
    try:
        assert store.meta(WRITER_KEY) is None
    finally:
        store.close()


def _content(where: str) -> list:
    from oesir_cli.milvus_store import MilvusStore

    store = MilvusStore(parse_location(where))
    try:
        return store.content()
    finally:
        store.close()


def _wait_for_session_to_end(sid: int, timeout_s: float = 60.0) -> None:
    """Wait until the killed job's Ray workers (own process groups, same session) have noticed and exited."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        left = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == sid and fields[0] != "Z":  # fields after the name: state, ppid, pgrp, session
                left.append(int(stat.parent.name))
        if not left:
            return
        for pid in left:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        time.sleep(0.5)


def test_kill_9_of_a_ray_index_run_then_rerun_gives_the_uninterrupted_index(tmp_path):
    photos = _photos(tmp_path / "photos", synthetic=0)
    for i in range(36):  # 40 photos: three batches, so a kill can land between them
        cv2.imwrite(str(photos / f"extra_{i:02d}.png"), synthetic_photo(100 + i, (240, 180)))
    killed, reference = f"milvus-lite:{tmp_path / 'killed.db'}", f"milvus-lite:{tmp_path / 'ref.db'}"
    args = ["index", str(photos), "--ray", "local"]
    # a random moment of the run; OESIR_TEST_KILL_AFTER=S replays the one a failure reports
    delay = float(os.environ.get("OESIR_TEST_KILL_AFTER", "0")) or random.Random().uniform(6.0, 20.0)
    quiet = {"stdout": subprocess.DEVNULL, "stderr": subprocess.DEVNULL}
    proc = subprocess.Popen([OESIR, *args, "--index", killed], start_new_session=True, **quiet)
    try:
        proc.wait(timeout=delay)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the job and everything it started (Ray, Milvus Lite), as a crash would
        proc.wait()
    _wait_for_session_to_end(proc.pid)
    done = _oesir(*args, "--index", killed, "--json")
    assert done.returncode == 0, (delay, done.stderr)
    # the uninterrupted index, made without Ray: Ray's descriptions must be the local ones
    assert _oesir("index", str(photos), "--index", reference).returncode == 0
    assert api.check(killed).notes == []
    content = _content(killed)
    assert len(content) == 40, delay
    assert content == _content(reference), f"killed after {delay:.1f} s"


@pytest.fixture()
def two_ray_nodes(tmp_path):
    """A head and a second node started with `ray start` on this machine (token authentication, as Ray sets up)."""
    port = _free_port()
    env = {**os.environ, "RAY_AUTH_MODE": "token"}
    common = ["--num-cpus=1", "--object-store-memory=100000000", "--disable-usage-stats"]
    try:
        run = {"env": env, "check": True, "capture_output": True, "timeout": 120}
        subprocess.run([RAY, "start", "--head", f"--port={port}", "--include-dashboard=false", *common], **run)
        subprocess.run([RAY, "start", f"--address=127.0.0.1:{port}", *common], **run)
        yield f"127.0.0.1:{port}", env
    finally:
        subprocess.run([RAY, "stop", "--force"], env=env, capture_output=True, timeout=120)


def test_two_ray_nodes_index_one_folder_together_each_photo_once(two_ray_nodes, tmp_path):
    address, env = two_ray_nodes
    code = f"import ray; ray.init(address={address!r}, logging_level='ERROR'); print(sum(n['Alive'] for n in ray.nodes()))"
    nodes = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert nodes.stdout.strip() == "2", nodes.stderr
    photos = _photos(tmp_path / "photos")
    where = f"milvus-lite:{tmp_path / 'm.db'}"
    run = _oesir("index", str(photos), "--index", where, "--ray", address, "--json", env=env)
    assert run.returncode == 0, run.stderr
    content = _content(where)
    assert sorted(c[0] for c in content) == sorted(str(p) for p in photos.iterdir())  # each photo once
    local = tmp_path / "local"
    api.index([photos], index_dir=local)
    assert api.info(where)["objects"] == api.info(local)["objects"], "no object row written twice"
    assert all(len({o[0] for o in c[8]}) == len(c[8]) for c in content)


@pytest.fixture()
def milvus_server(tmp_path):
    """Milvus Lite served over gRPC on a local port, as a Milvus server is reached."""
    port = _free_port()
    server = subprocess.Popen([str(BIN / "milvus-lite"), "server", "--data-dir", str(tmp_path / "served"), "--port", str(port)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)  # fmt: skip
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                socket.create_connection(("127.0.0.1", port), timeout=1).close()
                break
            except OSError:
                time.sleep(0.3)
        yield port
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_milvus_uri_reaches_a_served_milvus(milvus_server, collection):
    where = f"milvus://127.0.0.1:{milvus_server}/case42"
    run = _oesir("index", str(collection["photos"]), "--index", where, "--milvus-index", "FLAT")
    assert run.returncode == 0, run.stderr
    assert api.info(where)["index_type"] == "FLAT"
    _same_rankings(_ranked(collection["local"], collection["queries"][:2]), _ranked(where, collection["queries"][:2]))
    r = runner.invoke(app, ["info", "--index", where, "--json"])
    assert r.exit_code == 0 and '"photos": 8' in r.stdout
