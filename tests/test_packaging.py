"""oesir works when installed from its wheel, not only from a checkout.

The models are package data (`oesir_cli/weights/`, declared in pyproject.toml).
These tests build the wheel from the sources (`pip wheel --no-build-isolation`:
no network for the build), check that it carries every weights file byte for
byte, then install it into a fresh virtual environment (no system site-packages,
so nothing of this checkout or its .venv is visible; pip fetches the runtime
dependencies from the configured index, fast from pip's cache) and index and
search from a folder outside the checkout. About 40 s here, most of it pip.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
import sys
import venv
import zipfile
from pathlib import Path

import pytest
from typer.testing import CliRunner

from oesir_cli.cli import app
from oesir_cli.registry import PACKAGE_WEIGHTS, read_manifest

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"


def _run(cmd: list[str], cwd: Path, env: dict | None = None, timeout: float = 300) -> subprocess.CompletedProcess:
    r = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    assert r.returncode == 0, f"{' '.join(map(str, cmd))} exited {r.returncode}:\n{r.stdout[-3000:]}\n{r.stderr[-3000:]}"
    return r


@pytest.fixture(scope="module")
def wheel(tmp_path_factory) -> Path:
    """The wheel built from a copy of what the build reads (pyproject.toml, README.md, oesir_cli/), so the
    checkout gets no build/ folder and stray files in it cannot make the test pass."""
    base = tmp_path_factory.mktemp("wheel")
    src = base / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for licence in ROOT.glob("LICEN[CS]E*"):
        shutil.copy(licence, src / licence.name)
    shutil.copytree(ROOT / "oesir_cli", src / "oesir_cli", ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    dist = base / "dist"
    cmd = [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(dist), str(src)]
    _run(cmd, cwd=base)
    (built,) = dist.glob("oesir-*.whl")
    return built


def test_wheel_carries_every_weights_file_unchanged(wheel):
    manifest = read_manifest(PACKAGE_WEIGHTS)
    with zipfile.ZipFile(wheel) as z:
        names = set(z.namelist())
        assert "oesir_cli/weights/manifest.json" in names and "oesir_cli/weights/LICENSES.md" in names
        assert json.loads(z.read("oesir_cli/weights/manifest.json")) == manifest
        for name, entry in manifest["files"].items():
            member = f"oesir_cli/weights/{name}"
            assert member in names, f"{name} is missing from the wheel"
            h = hashlib.sha256()
            with z.open(member) as fh:
                while block := fh.read(1 << 20):
                    h.update(block)
            assert h.hexdigest() == entry["sha256"], f"{name} differs in the wheel"


def test_installed_wheel_indexes_and_searches_outside_the_checkout(wheel, tmp_path):
    env_dir = tmp_path / "venv"
    venv.EnvBuilder(with_pip=True, system_site_packages=False).create(env_dir)
    py, oesir = env_dir / "bin" / "python", env_dir / "bin" / "oesir"
    env = {k: v for k, v in os.environ.items() if k not in ("OESIR_WEIGHTS", "OESIR_INDEX", "PYTHONPATH", "VIRTUAL_ENV")}
    _run([str(py), "-m", "pip", "install", "-q", str(wheel)], cwd=tmp_path, env=env, timeout=600)

    work = tmp_path / "case"
    (work / "photos").mkdir(parents=True)
    for name in ("rocket.jpg", "chelsea.jpg", "coffee.jpg"):
        shutil.copy(EXAMPLES / "photos" / name, work / "photos" / name)
    shutil.copy(EXAMPLES / "spliced.jpg", work / "spliced.jpg")

    # the weights it loads are the installed package's, not this checkout's
    where = _run([str(py), "-c", "from oesir_cli.registry import weights_dir; print(weights_dir())"], cwd=work, env=env)
    assert Path(where.stdout.strip()).is_relative_to(env_dir), where.stdout
    assert _run([str(oesir), "--version"], cwd=work, env=env).stdout.startswith("oesir ")
    _run([str(oesir), "index", "photos", "--index", "idx"], cwd=work, env=env)
    r = _run([str(oesir), "search", "spliced.jpg", "--index", "idx", "--json", "--top", "3"], cwd=work, env=env)
    lines = r.stdout.splitlines()
    assert len(lines) == 1, r.stdout
    result = json.loads(lines[0])
    assert result["query"] == "spliced.jpg"
    assert [Path(m["image"]).name for m in result["matches"][:2]] == ["rocket.jpg", "chelsea.jpg"]


def test_missing_weights_say_where_and_how_to_point_elsewhere(tmp_path, monkeypatch):
    monkeypatch.setenv("OESIR_WEIGHTS", str(tmp_path))
    r = CliRunner().invoke(app, ["weights", "verify"])
    assert r.exit_code == 1
    assert r.stderr.count("\n") == 1, r.stderr
    assert str(tmp_path / "manifest.json") in r.stderr and "$OESIR_WEIGHTS" in r.stderr, r.stderr


def test_missing_package_weights_say_how_to_point_elsewhere(tmp_path, monkeypatch):
    import oesir_cli.registry as registry

    monkeypatch.delenv("OESIR_WEIGHTS", raising=False)
    monkeypatch.setattr(registry, "PACKAGE_WEIGHTS", tmp_path / "weights")
    r = CliRunner().invoke(app, ["weights", "verify"])
    assert r.exit_code == 1
    assert r.stderr.count("\n") == 1, r.stderr
    assert str(tmp_path / "weights" / "manifest.json") in r.stderr and "set $OESIR_WEIGHTS" in r.stderr, r.stderr
