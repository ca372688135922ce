"""The command line as an investigator meets it: --version, examples in --help, folders as queries,
option values checked, readable sizes, --index pointing at a file, what `check` calls damage, and
file names kept whole in an 80-column results table. One small index (three example photos) is
built once for the module."""

from __future__ import annotations

import importlib.metadata
import json
import re
import shutil
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from oesir_cli import api
from oesir_cli.cli import app
from oesir_cli.store import stamp_path

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
runner = CliRunner()


@pytest.fixture(scope="module")
def indexed(tmp_path_factory) -> tuple[Path, Path]:
    """(photos folder, index) of three example photos under long file names, as a case folder has."""
    base = tmp_path_factory.mktemp("case")
    photos = base / "evidence_collected_2024-05-17_from_the_press_agency_archive"
    photos.mkdir()
    for name in ("rocket.jpg", "chelsea.jpg", "coffee.jpg"):
        shutil.copy(EXAMPLES / "photos" / name, photos / f"original_{Path(name).stem}_full_resolution_scan.jpg")
    idx = base / "idx"
    summary = api.index([photos], index_dir=idx)
    assert summary.added == 3
    return photos, idx


# --version and --help


def test_version_prints_the_package_version():
    r = runner.invoke(app, ["--version"])
    assert r.exit_code == 0
    assert r.stdout == f"oesir {importlib.metadata.version('oesir')}\n"


def _commands(group: typer.core.TyperGroup, prefix: tuple[str, ...] = ()) -> list:
    found = []
    for name, command in group.commands.items():
        found.append(((*prefix, name), command))
        if isinstance(command, typer.core.TyperGroup):
            found += _commands(command, (*prefix, name))
    return found


ROOT = typer.main.get_command(app)
COMMANDS = [((), ROOT), *_commands(ROOT)]


def test_every_command_is_covered():
    names = {" ".join(path) for path, _ in COMMANDS}
    assert {"index", "search", "localize", "info", "check", "distill", "weights", "weights verify"} <= names


@pytest.mark.parametrize("path,command", COMMANDS, ids=[" ".join(("oesir", *p)) for p, _ in COMMANDS])
def test_help_shows_each_example_on_its_own_line(path, command):
    epilog = command.epilog or ""
    assert "Examples:" in epilog, f"`oesir {' '.join(path)} --help` has no examples"
    examples = [line.strip() for line in epilog.split("Examples:", 1)[1].splitlines() if line.strip()]
    assert examples
    r = runner.invoke(app, [*path, "--help"], env={"COLUMNS": "80"})
    assert r.exit_code == 0
    shown = [line.strip() for line in r.stdout.splitlines()]
    for example in examples:
        assert example in shown, f"{example!r} is not one line of:\n{r.stdout}"


# search: folders and --top


def test_search_walks_a_folder_like_index_does(indexed, tmp_path):
    _, idx = indexed
    queries = tmp_path / "queries"
    (queries / "sub").mkdir(parents=True)
    shutil.copy(EXAMPLES / "spliced.jpg", queries / "b.jpg")
    shutil.copy(EXAMPLES / "spliced.jpg", queries / "sub" / "a.jpg")
    shutil.copy(EXAMPLES / "photos" / "chelsea.jpg", queries / "a.jpg")
    (queries / "notes.txt").write_text("not a photo")
    r = runner.invoke(app, ["search", str(queries), "--index", str(idx), "--json", "--top", "2"])
    assert r.exit_code == 0, r.output
    lines = [json.loads(line) for line in r.stdout.splitlines()]
    assert [x["query"] for x in lines] == [str(queries / n) for n in ("a.jpg", "b.jpg", "sub/a.jpg")]
    assert all(len(x["matches"]) == 2 for x in lines)
    assert "chelsea" in Path(lines[0]["matches"][0]["image"]).name


def test_search_of_a_folder_without_photos_is_bad_input(indexed, tmp_path):
    _, idx = indexed
    (tmp_path / "empty").mkdir()
    r = runner.invoke(app, ["search", str(tmp_path / "empty"), "--index", str(idx)])
    assert r.exit_code == 2
    assert "no photos under this folder" in r.stderr and r.stdout == ""


@pytest.mark.parametrize("top", ["0", "-3"])
def test_top_below_one_is_a_usage_error(top, tmp_path):
    r = runner.invoke(app, ["search", str(EXAMPLES / "spliced.jpg"), "--index", str(tmp_path / "idx"), "--top", top])
    assert r.exit_code == 2
    assert r.stderr == f"oesir: error: --top must be at least 1 (got {top})\n"
    assert r.stdout == ""


def test_api_refuses_top_below_one(indexed):
    searcher = api.open_searcher(indexed[1])
    for top in (0, -3):
        with pytest.raises(ValueError, match="top must be at least 1"):
            api.search_path(searcher, EXAMPLES / "spliced.jpg", top=top)
    assert len(api.search_path(searcher, EXAMPLES / "spliced.jpg", top=1)) == 1


# info


def test_info_shows_sizes_for_people_and_bytes_for_scripts(indexed):
    _, idx = indexed
    r = runner.invoke(app, ["info", "--index", str(idx)])
    assert r.exit_code == 0
    assert re.search(r"on disk: \d+\.\d (KB|MB)\n", r.stdout), r.stdout
    assert re.search(r"per photo: \d+\.\d (KB|MB)/photo\n", r.stdout), r.stdout
    assert re.search(r"per object: \d+(\.\d)? (B|KB)/object\n", r.stdout), r.stdout
    stats = json.loads(runner.invoke(app, ["info", "--index", str(idx), "--json"]).stdout)
    assert all(isinstance(stats[k], int) for k in ("bytes_on_disk", "bytes_per_photo", "bytes_per_object"))
    assert stats["bytes_on_disk"] > 1000


# --index naming a regular file


@pytest.mark.parametrize(
    "args",
    [
        ["index", str(EXAMPLES / "photos" / "rocket.jpg")],
        ["search", str(EXAMPLES / "spliced.jpg")],
        ["localize", str(EXAMPLES / "spliced.jpg"), "--auto"],
        ["info"],
        ["check"],
    ],
    ids=lambda a: a[0],
)
def test_index_option_naming_a_file_is_one_clear_error(args, tmp_path):
    notes = tmp_path / "notes.txt"
    notes.write_text("case notes\n")
    r = runner.invoke(app, [*args, "--index", str(notes)])
    assert r.exit_code == 1
    assert r.stderr == f"oesir: error: index location {notes} is a file, not an index folder\n"
    assert notes.read_text() == "case notes\n"


# check: missing or stale graphs are notes, altered ones damage; so are missing or altered local-feature segments


def test_check_notes_a_missing_or_stale_graph_and_flags_an_altered_one(indexed, tmp_path, monkeypatch):
    from oesir_cli import graphs

    idx = tmp_path / "idx"
    shutil.copytree(indexed[1], idx)
    monkeypatch.setattr(graphs, "EXACT_OBJECTS_MAX", 0)  # so the index needs an object graph
    graph = idx / "objects.hnsw"
    assert not graph.exists()  # as after Ctrl-C of `oesir index` before the graph was saved
    r = runner.invoke(app, ["check", "--index", str(idx)])
    assert r.exit_code == 0, r.output
    assert "objects.hnsw: missing" in r.stdout and "note: objects.hnsw is missing" in r.stdout and "rebuilds it" in r.stdout
    report = json.loads(runner.invoke(app, ["check", "--index", str(idx), "--json"]).stdout)
    assert report["ok"] and report["graphs"]["objects.hnsw"] == "missing" and len(report["notes"]) == 1
    r = runner.invoke(app, ["check", "--index", str(idx), "--repair", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["graphs"]["objects.hnsw"] == "rebuilt"
    saved = graph.read_bytes()

    stamp = json.loads(stamp_path(graph).read_text())
    stamp_path(graph).write_text(json.dumps({**stamp, "generation": stamp["generation"] - 1}))
    r = runner.invoke(app, ["check", "--index", str(idx), "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["graphs"]["objects.hnsw"] == "stale"

    stamp_path(graph).write_text(json.dumps(stamp))
    assert json.loads(runner.invoke(app, ["check", "--index", str(idx), "--json"]).stdout)["graphs"]["objects.hnsw"] == "ok"
    flipped = bytearray(saved)
    flipped[len(flipped) // 2] ^= 0xFF  # same size, other bytes: only the sha256 tells
    graph.write_bytes(bytes(flipped))
    r = runner.invoke(app, ["check", "--index", str(idx)])
    assert r.exit_code == 1 and "objects.hnsw: damaged" in r.stdout and "--repair" in r.stderr

    r = runner.invoke(app, ["check", "--index", str(idx), "--repair", "--json"])
    assert r.exit_code == 0 and json.loads(r.stdout)["graphs"]["objects.hnsw"] == "rebuilt"
    assert graph.read_bytes() != bytes(flipped)
    assert runner.invoke(app, ["check", "--index", str(idx)]).exit_code == 0


def test_check_flags_a_missing_segment_and_search_names_the_repair(indexed, tmp_path):
    """A deleted local-feature segment is damage to the photos it held, never a note: the index cannot search them."""
    photos, _ = indexed
    idx = tmp_path / "idx"
    shutil.copytree(indexed[1], idx)
    (segment,) = idx.glob("local-*.ivf")  # three photos, one batch: one segment
    segment.unlink()
    r = runner.invoke(app, ["check", "--index", str(idx)])
    assert r.exit_code == 1, r.output
    for path in photos.iterdir():
        assert f"damaged photo: {path}: its local features (segment {segment.name}) are missing or damaged" in r.stdout
    assert "run `oesir check --repair`, then `oesir index PATHS`" in r.stderr
    r = runner.invoke(app, ["search", str(EXAMPLES / "spliced.jpg"), "--index", str(idx)])
    assert r.exit_code == 1 and segment.name in r.stderr and "oesir check --repair" in r.stderr and "Traceback" not in r.output

    r = runner.invoke(app, ["check", "--index", str(idx), "--repair", "--json"])
    report = json.loads(r.stdout)
    assert r.exit_code == 0 and report["ok"] and report["photos"] == 0 and report["damaged_segments"] == []
    assert not list(idx.glob("local-*.ivf"))
    r = runner.invoke(app, ["index", str(photos), "--index", str(idx)])
    assert r.exit_code == 0, r.output
    assert api.info(idx)["photos"] == 3 and runner.invoke(app, ["check", "--index", str(idx)]).exit_code == 0


# the results table at 80 columns


def test_results_table_keeps_file_names_whole_at_80_columns(indexed):
    photos, idx = indexed
    names = sorted(str(p) for p in photos.iterdir())
    assert min(len(n) for n in names) > 80 - 50  # longer than what the other columns leave
    r = runner.invoke(app, ["search", str(EXAMPLES / "spliced.jpg"), "--index", str(idx)], env={"COLUMNS": "80"})
    assert r.exit_code == 0, r.output
    lines = r.stdout.splitlines()
    for name in names:
        assert any(name in line for line in lines), f"{name} broken across lines:\n{r.stdout}"
    short = runner.invoke(app, ["search", str(EXAMPLES / "spliced.jpg"), "--index", str(idx), "--top", "1"])
    assert short.exit_code == 0 and "rank" in short.stdout
