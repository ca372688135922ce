"""The Python API under the CLI: choices validated, --auto's choice of originals, weights verification,
disk-full told by type. Fast: no model is loaded."""

from __future__ import annotations

import errno
import shutil
import sqlite3
from pathlib import Path

import cv2
import pytest
from typer.testing import CliRunner

import oesir_cli.localize as localize_module
from oesir_cli import api
from oesir_cli.choices import Relation, Role, Verdict
from oesir_cli.cli import _index_error, app
from oesir_cli.errors import DiskFullError, StoreError
from oesir_cli.localize import AlignmentError
from oesir_cli.registry import read_manifest, weights_dir
from oesir_cli.search import Match, SearchResult

from .conftest import replaced_model_is_used_then_restamped, synthetic_photo

runner = CliRunner()


def _match(image: str, votes: int, role: Role = Role.CANDIDATE) -> Match:
    return Match(image, float(votes), 1.0, votes, [0.0, 0.0, 10.0, 10.0], [0.0, 0.0, 10.0, 10.0], role)


def _photo(path: Path, seed: int = 0) -> Path:
    cv2.imwrite(str(path), synthetic_photo(seed, (64, 48)))
    return path


class FakeSearcher:
    """Stands in for `Searcher`: records the mode it is asked for and returns fixed matches."""

    def __init__(self, matches: list[Match]):
        self.matches = matches
        self.modes: list[object] = []

    def search(self, rgb, top: int = 10, mode: str = "fused") -> SearchResult:
        self.modes.append(mode)
        roles = {m.role for m in self.matches}
        verdict = Verdict.SOURCES if roles & {Role.HOST, Role.DONOR} else Verdict.NONE
        return SearchResult(self.matches[:top], verdict)

    def search_rgb(self, rgb, top: int = 10, mode: str = "fused") -> list[Match]:
        return self.search(rgb, top, mode).matches


# choices


def test_localize_paths_rejects_an_unknown_relation_before_reading_photos():
    with pytest.raises(ValueError, match=r"unknown relation 'hots'; one of auto, host, donor"):
        api.localize_paths("no-such-query.jpg", "no-such-original.jpg", relation="hots")


@pytest.mark.parametrize(
    ("given", "passed"),
    [(None, None), ("auto", None), (Relation.AUTO, None), ("host", "host"), (Relation.DONOR, "donor")],
)
def test_localize_paths_passes_the_relation_as_plain_text(tmp_path, monkeypatch, given, passed):
    seen = []
    monkeypatch.setattr(localize_module, "localize", lambda q, o, **kw: seen.append(kw["relation"]) or "result")
    q, o = _photo(tmp_path / "q.png", 1), _photo(tmp_path / "o.png", 2)
    assert api.localize_paths(q, o, relation=given, use_features=False) == "result"
    assert seen == [passed] and (passed is None or type(seen[0]) is str)


def test_search_path_validates_the_mode(tmp_path):
    searcher = FakeSearcher([])
    with pytest.raises(ValueError, match=r"unknown mode 'bogus'; one of fused, objects, local"):
        api.search_path(searcher, "no-such-query.jpg", mode="bogus")
    api.search_path(searcher, _photo(tmp_path / "q.png"), mode="objects")
    assert searcher.modes == ["objects"] and type(searcher.modes[0]) is str


def test_index_rejects_an_unknown_model_before_creating_anything(tmp_path):
    with pytest.raises(ValueError, match=r"unknown model 'bogus'; one of teacher, student"):
        api.index([tmp_path], index_dir=tmp_path / "idx", model="bogus")
    assert not (tmp_path / "idx").exists()


def test_cli_bad_choices_are_one_line_usage_errors():
    for args, line in (
        (["search", "q.jpg", "--mode", "bogus"], "unknown --mode 'bogus' (fused, objects, local)"),
        (["localize", "q.jpg", "o.jpg", "--relation", "hots"], "unknown --relation 'hots' (auto, host, donor)"),
        (["index", "photos", "--model", "bogus"], "unknown --model 'bogus' (teacher, student)"),
        (["weights", "pq", "--images", "photos", "--model", "bogus"], "unknown --model 'bogus' (teacher, student)"),
    ):
        r = runner.invoke(app, args)
        assert r.exit_code == 2, (args, r.output)
        assert r.stderr == f"oesir: error: {line}\n" and r.stdout == ""


# --auto


def test_plan_auto_takes_the_host_and_every_donor_and_says_what_it_skips():
    host, weak = _match("photos/host.jpg", 40, Role.HOST), _match("photos/weak.jpg", 1)
    d1, d2 = _match("photos/d1.jpg", 0, Role.DONOR), _match("photos/d2.jpg", 9, Role.DONOR)
    plan = api.plan_auto(SearchResult([host, d1, weak, d2], Verdict.SOURCES))
    assert [(o.role, o.original.name, o.label) for o in plan.originals] == [
        (Relation.HOST, "host.jpg", "host"),
        (Relation.DONOR, "d1.jpg", "donor1"),  # a donor with no votes (a mirrored paste) is not dropped
        (Relation.DONOR, "d2.jpg", "donor2"),
    ]
    assert [p.name for p, _ in plan.skipped] == ["weak.jpg"] and "candidate" in plan.skipped[0][1]
    none = api.plan_auto(SearchResult([weak], Verdict.NONE))
    assert none.originals == [] and none.verdict is Verdict.NONE


def test_localize_auto_yields_each_original_with_its_result_or_error(tmp_path, monkeypatch):
    calls = []

    def fake_localize_paths(query, original, relation=None, **kw):
        calls.append((Path(original).name, relation))
        if relation is Relation.DONOR:
            raise AlignmentError("could not align")
        return f"result for {Path(original).name}"

    monkeypatch.setattr(api, "localize_paths", fake_localize_paths)
    searcher = FakeSearcher([_match("host.jpg", 40, Role.HOST), _match("donor.jpg", 5, Role.DONOR), _match("x.jpg", 1)])
    plan, runs = api.localize_auto(_photo(tmp_path / "q.png"), searcher=searcher)
    got = list(runs)
    assert calls == [("host.jpg", Relation.HOST), ("donor.jpg", Relation.DONOR)]
    assert [(a.role, a.original, a.result, a.label) for a in got] == [
        (Relation.HOST, Path("host.jpg"), "result for host.jpg", "host"),
        (Relation.DONOR, Path("donor.jpg"), None, "donor1"),
    ]
    assert got[0].error is None and isinstance(got[1].error, AlignmentError)
    assert [p.name for p, _ in plan.skipped] == ["x.jpg"]
    assert searcher.modes == ["fused"]
    plan, runs = api.localize_auto(_photo(tmp_path / "q.png"), searcher=FakeSearcher([_match("x.jpg", 1)]))
    assert plan.originals == [] and list(runs) == []


# weights


def test_verify_weights_on_the_shipped_folder():
    report = api.verify_weights()
    assert report.ok, report.bad
    assert [f.name for f in report.files] == list(read_manifest()["files"])
    assert report.as_dict()["ok"] is True


def _partial_weights(tmp_path: Path, name: str = "whitening_lite0_512.npz") -> Path:
    d = tmp_path / "weights"
    d.mkdir()
    for f in ("manifest.json", name):
        shutil.copy(weights_dir() / f, d / f)
    return d


def test_verify_weights_reports_an_altered_file(tmp_path):
    d = _partial_weights(tmp_path)
    status = api.verify_weights(d).as_dict()["files"]
    assert status["whitening_lite0_512.npz"] == "ok"
    assert {s for n, s in status.items() if n != "whitening_lite0_512.npz"} == {"missing"}
    data = bytearray((d / "whitening_lite0_512.npz").read_bytes())
    data[len(data) // 2] ^= 0x01
    (d / "whitening_lite0_512.npz").write_bytes(bytes(data))
    report = api.verify_weights(d)
    assert not report.ok
    assert next(f for f in report.files if f.name == "whitening_lite0_512.npz").status == "altered"


def test_weights_verify_cli_lists_each_file(tmp_path, monkeypatch):
    d = _partial_weights(tmp_path)
    monkeypatch.setenv("OESIR_WEIGHTS", str(d))
    r = runner.invoke(app, ["weights", "verify"])
    names = list(read_manifest(d)["files"])
    assert r.exit_code == 1
    assert r.stdout.splitlines() == [f"{'ok' if n == 'whitening_lite0_512.npz' else 'BAD'}  {n}" for n in names]
    assert r.stderr == f"oesir: error: {len(names) - 1} weights file(s) missing or altered\n"


# disk full


def _sqlite_full() -> sqlite3.OperationalError:
    con = sqlite3.connect(":memory:")
    con.execute("create table t (x blob)")
    con.execute("pragma max_page_count = 2")
    try:
        con.execute("insert into t values (zeroblob(100000))")
    except sqlite3.OperationalError as exc:
        return exc
    finally:
        con.close()
    raise AssertionError("sqlite did not fill up")


def test_disk_full_is_told_by_type_not_text():
    assert api.is_disk_full(DiskFullError("no space left writing the index"))
    assert api.is_disk_full(OSError(errno.ENOSPC, "No space left on device"))
    assert api.is_disk_full(_sqlite_full())
    assert not api.is_disk_full(StoreError("index is full of surprises"))
    assert not api.is_disk_full(OSError(errno.EACCES, "Permission denied"))
    assert not api.is_disk_full(sqlite3.OperationalError("database is full"))  # no SQLITE_FULL code


def test_index_error_lines():
    full = "cannot write the index: disk full ({}); the index keeps its last committed state"
    own = "cannot write the index at /x: disk full (write failed); the index keeps its last committed state"
    assert _index_error(DiskFullError(own)) == own  # the store's own message, not wrapped twice
    exc = _sqlite_full()
    assert _index_error(exc) == full.format(str(exc))
    assert _index_error(sqlite3.DatabaseError("file is not a database")) == (
        "index database error: file is not a database; run `oesir check`"
    )
    assert _index_error(StoreError("index is locked\nby pid 1")) == "index is locked"


def test_an_index_made_with_a_replaced_model_file_is_used_then_restamped_and_others_are_refused(tmp_path):
    from oesir_cli.store import Store

    where = tmp_path / "idx"

    def stamp(version: str | None) -> str | None:
        store = Store(where)
        try:
            if version is not None:
                with store.transaction():
                    store.set_meta("model_version", version)
            return store.meta("model_version")
        finally:
            store.close()

    replaced_model_is_used_then_restamped(str(where), stamp)
