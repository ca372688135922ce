"""Codecs: each round-trips through an index and ranks like exact search on what it stores."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from oesir_cli import api
from oesir_cli.cli import app
from oesir_cli.codec import CODECS, Codec, CodecError, pq_encode, squared_l2, train_codebook
from oesir_cli.imageio import load_rgb

runner = CliRunner()
SPLICED = Path(__file__).resolve().parent.parent / "examples" / "spliced.jpg"


def _unit(rng: np.random.Generator, n: int, d: int = 64) -> np.ndarray:
    x = rng.normal(size=(n, d)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_float_codecs_round_trip():
    x = _unit(np.random.default_rng(0), 50)
    assert np.array_equal(Codec("float32", 64).decode(Codec("float32", 64).encode(x)), x)
    f16 = Codec("float16", 64)
    assert f16.encode(x).shape == (50, 128)
    np.testing.assert_allclose(f16.decode(f16.encode(x)), x, atol=1e-3)


def test_pq_codes_distances_and_training():
    rng = np.random.default_rng(1)
    train, x, q = _unit(rng, 2000), _unit(rng, 300), _unit(rng, 7)
    cent = train_codebook(train, m=8, k=32, iterations=10)
    assert cent.shape == (8, 32, 8)
    pq = Codec("pq", 64, cent)
    codes = pq.encode(x)
    assert codes.shape == (300, 8) and codes.dtype == np.uint8
    recon = pq.decode(codes)
    assert np.array_equal(pq_encode(recon, cent), codes)  # a reconstruction encodes to its own code
    # asymmetric distances are exact squared L2 to the reconstructions
    np.testing.assert_allclose(pq.distances(q, codes), squared_l2(q, recon), atol=1e-4)
    # and they rank close to the true distances (the codebook learned something)
    err = np.abs(pq.distances(q, codes) - squared_l2(q, x)).mean()
    assert err < 0.5 * squared_l2(q, x).mean()
    with pytest.raises(CodecError):
        pq.decode(np.zeros((3, 9), np.uint8))


def _bruteforce_ranking(searcher, rgb: np.ndarray) -> list[str]:
    """Eq. 7 over float32 embeddings: the photos ranked by min squared L2 over object pairs."""
    boxes, emb = searcher.engine.objects(rgb)
    catalogue = searcher.catalogue
    d = [squared_l2(emb, catalogue.embeddings[catalogue.object_image == p]).min() for p in range(len(catalogue.paths))]
    return [catalogue.paths[i] for i in np.argsort(d, kind="stable")]


@pytest.mark.parametrize("codec", CODECS)
def test_codec_index_round_trip(codec, photo_dir, tmp_path):
    ref_idx, idx = tmp_path / "ref", tmp_path / codec
    api.index([photo_dir], index_dir=ref_idx, local_features=False)
    r = runner.invoke(app, ["index", str(photo_dir), "--index", str(idx), "--codec", codec, "--no-local", "--json"])
    assert r.exit_code == 0, r.output
    rgb = load_rgb(SPLICED)
    exact = _bruteforce_ranking(api.open_searcher(ref_idx), rgb)
    got = [m.image for m in api.open_searcher(idx).search_rgb(rgb, top=len(exact), mode="objects")]  # reopened
    if codec == "pq":  # the stated recall: the top 2 (host, donor) as exact search, >= 2/3 of its top 3
        assert got[:2] == exact[:2] and len(set(got[:3]) & set(exact[:3])) >= 2
    else:
        assert got == exact
    info = json.loads(runner.invoke(app, ["info", "--index", str(idx), "--json"]).stdout)
    assert info["codec"] == codec and info["local_features"] is False
    assert info["bytes_per_object"] == round(sum(p.stat().st_size for p in idx.iterdir()) / info["objects"])
    assert runner.invoke(app, ["check", "--index", str(idx)]).exit_code == 0


def test_student_index_with_pq_codes(photo_dir, tmp_path):
    """The student's own shipped codebook: a student pq index keeps the exact top 2 of a student float32 index."""
    ref_idx, idx = tmp_path / "ref", tmp_path / "pq"
    api.index([photo_dir], index_dir=ref_idx, local_features=False, model="student")
    api.index([photo_dir], index_dir=idx, local_features=False, model="student", codec="pq")
    rgb = load_rgb(SPLICED)
    exact = _bruteforce_ranking(api.open_searcher(ref_idx), rgb)
    got = [m.image for m in api.open_searcher(idx).search_rgb(rgb, top=len(exact), mode="objects")]
    assert got[:2] == exact[:2] and api.info(idx)["codec"] == "pq"
    assert runner.invoke(app, ["check", "--index", str(idx)]).exit_code == 0


def test_transcode_in_place_equals_fresh_index(photo_dir, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    api.index([photo_dir], index_dir=a, local_features=False, codec="float32")
    before = api.info(a)["bytes_on_disk"]
    api.index([photo_dir], index_dir=a, codec="pq")  # float32 -> pq, no photo re-read
    api.index([photo_dir], index_dir=b, codec="pq", local_features=False)
    from oesir_cli.store import Store

    sa, sb = Store(a), Store(b)
    assert [r[1:] for r in sa.content()] == [r[1:] for r in sb.content()]  # same sha, boxes, codes, digests
    assert api.info(a)["codec"] == "pq" and runner.invoke(app, ["check", "--index", str(a)]).exit_code == 0
    assert api.info(a)["bytes_on_disk"] < before - 0.5 * (1024 - 32) * api.info(a)["objects"]  # freed pages returned
    r = runner.invoke(app, ["index", str(photo_dir), "--index", str(a), "--codec", "float32"])
    assert r.exit_code == 1 and "--rebuild" in r.stderr and "Traceback" not in r.output
    r = runner.invoke(app, ["index", str(photo_dir), "--index", str(a), "--local"])
    assert r.exit_code == 1 and "local features" in r.stderr
    r = runner.invoke(app, ["index", str(photo_dir), "--index", str(tmp_path / "c"), "--codec", "zip"])
    assert r.exit_code == 1 and "unknown codec" in r.stderr


def test_ivfpq_distances_are_the_codec_distances():
    """faiss IVF-PQ over oesir's codebook: same codes, same asymmetric distances; all lists probed = exhaustive."""
    from oesir_cli.ivf import IVFPQ

    rng = np.random.default_rng(3)
    train, x, q = _unit(rng, 3000), _unit(rng, 2000), _unit(rng, 5)
    cent = train_codebook(train, m=8, k=256, iterations=8)
    pq = Codec("pq", 64, cent)
    ivf = IVFPQ.create(cent, train, nlist=16)
    ivf.add(x, np.arange(100, 100 + len(x)))
    assert ivf.count == len(x)
    ids, d = ivf.search(q, 20, nprobe=16)
    ref = pq.distances(q, pq.encode(x))
    for i in range(len(q)):
        np.testing.assert_allclose(d[i], ref[i, ids[i] - 100], rtol=1e-4, atol=1e-4)
        assert set(ids[i] - 100) == set(np.argsort(ref[i], kind="stable")[:20])


@pytest.mark.parametrize("codec", ["float32", "pq"])
def test_large_index_path_matches_exhaustive(codec, photo_dir, tmp_path, monkeypatch):
    """Above EXACT_OBJECTS_MAX search goes through the object structure (hnswlib; faiss IVF-PQ for pq), then
    re-ranks exactly; probing every list / a graph over a few objects must give the exhaustive ranking."""
    from oesir_cli import graphs

    idx = tmp_path / "idx"
    api.index([photo_dir], index_dir=idx, codec=codec, local_features=False)
    rgb = load_rgb(SPLICED)
    exhaustive = [(m.image, round(m.distance, 4)) for m in api.open_searcher(idx).search_rgb(rgb, top=5, mode="objects")]
    monkeypatch.setattr(graphs, "EXACT_OBJECTS_MAX", 0)
    searcher = api.open_searcher(idx)
    name = "objects.ivfpq" if codec == "pq" else "objects.hnsw"
    assert searcher.photos.objects is not None and (idx / name).exists() and (idx / f"{name}.json").exists()
    assert [(m.image, round(m.distance, 4)) for m in searcher.search_rgb(rgb, top=5, mode="objects")] == exhaustive
    report = json.loads(runner.invoke(app, ["check", "--index", str(idx), "--json"]).stdout)
    assert report["graphs"][name] == "ok"
    monkeypatch.setattr(graphs, "EXACT_OBJECTS_MAX", 200_000)
    api.open_searcher(idx)  # back below the threshold: the structure is not needed and is removed
    assert not (idx / name).exists()


def test_a_new_index_stores_float16_by_default(photo_dir, tmp_path):
    """float16 halves the bytes of float32 and ranks alike (bench/RESULTS.md, codecs): the default since format 3."""
    from oesir_cli.codec import DEFAULT_CODEC

    api.index([photo_dir], index_dir=tmp_path / "idx", local_features=False)
    assert DEFAULT_CODEC == "float16" and api.info(tmp_path / "idx")["codec"] == "float16"


_WHITEN_IN_A_FRESH_PROCESS = """
import hashlib, sys
import numpy as np  # first, so OPENBLAS_NUM_THREADS of the environment decides BLAS's threads
from oesir_cli.embed import Whitening
rng = np.random.default_rng(7)
w = Whitening(rng.standard_normal(1392).astype(np.float32), rng.standard_normal((1392, 256)).astype(np.float32))
print(hashlib.sha256(w.apply(rng.standard_normal((9, 1392)).astype(np.float32)).tobytes()).hexdigest())
"""


def test_whitened_embeddings_do_not_depend_on_how_many_threads_blas_uses():
    # a library user's process may have numpy's BLAS on every core, `oesir index` on one: the stored bytes of a
    # photo must not depend on it (a resumed or re-run index must equal an uninterrupted one)
    digests = {
        subprocess.run(
            [sys.executable, "-c", _WHITEN_IN_A_FRESH_PROCESS],
            env={**os.environ, "OPENBLAS_NUM_THREADS": str(threads), "OMP_NUM_THREADS": str(threads)},
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        for threads in (1, 2, 4)
    }
    assert len(digests) == 1
