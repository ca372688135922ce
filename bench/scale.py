"""Scale benchmark (issue #7): how far one machine goes, per codec, from 100k to 10M objects.

    python bench/scale.py --index /tmp/oesir-objects --queries ../shared/data/casia-sir/queries \\
        --sizes 100000,1000000,10000000 --work /tmp/oesir-scale

Data. The real object embeddings of an oesir index of the standard database
(`--index`, float32, e.g. `oesir index --no-local`) are kept as they are; the
rest of the N objects are synthetic, drawn from a Gaussian mixture fitted to
the real ones (64 k-means components, each a diagonal Gaussian with its
cluster's per-dimension mean and spread, weighted by cluster size; samples are
L2-normalised like real embeddings). Synthetic photos have 8 objects each.
Queries are the real object embeddings of the first `--n-queries` query photos
of `--queries`, so their true sources are in every database.

Per N and codec: build time; bytes per object of the search structure on disk
and of the stored codes; resident memory of the structure; search latency per
query photo (all its objects, p50 / p99, the machine's 2 threads); recall@10 of
photos against exact search (Eq. 7 by brute force over the float32 vectors).

* float32, float16: what `oesir search` does above EXACT_OBJECTS_MAX objects:
  an hnswlib graph (over the float32 vectors; float16 only shrinks the stored
  codes) proposes the nearest objects of each query object, and every photo
  owning one is re-ranked exactly by Eq. 7 over its stored (decoded) vectors.
* pq: faiss IVF-PQ over oesir's 32-byte PQ codes (`oesir_cli.ivf`); its
  distances are the codec's asymmetric distances, exact w.r.t. the stored
  codes, so a photo's Eq. 7 distance is the minimum over its objects found.

Graph codecs are built up to `--graph-max` objects (an hnswlib build of 10M
256-d vectors needs ~11 GB and hours on 2 cores); above, the table says so.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from oesir_cli import api
from oesir_cli.ann import Graph
from oesir_cli.codec import Codec, squared_l2
from oesir_cli.graphs import OBJECT_GRAPH
from oesir_cli.imageio import load_rgb
from oesir_cli.ivf import IVFPQ, nlist_for
from oesir_cli.registry import verified_file
from oesir_cli.store import Store

OBJECTS_PER_PHOTO = 8
CHUNK = 250_000
TOP = 10


def rss_bytes() -> int:
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


class Mixture:
    """Diagonal Gaussian mixture fitted by k-means to real embeddings."""

    def __init__(self, x: np.ndarray, k: int = 64, seed: int = 0):
        rng = np.random.default_rng(seed)
        cent = x[rng.choice(len(x), k, replace=False)]
        for _ in range(20):
            assign = squared_l2(x, cent).argmin(1)
            cent = np.stack([x[assign == j].mean(0) if (assign == j).any() else cent[j] for j in range(k)])
        self.mean = cent.astype(np.float32)
        self.std = np.stack([x[assign == j].std(0) if (assign == j).sum() > 1 else x.std(0) for j in range(k)]).astype(np.float32)
        self.weight = np.bincount(assign, minlength=k) / len(x)

    def sample(self, n: int, rng: np.random.Generator) -> np.ndarray:
        comp = rng.choice(len(self.weight), n, p=self.weight)
        x = self.mean[comp] + self.std[comp] * rng.standard_normal((n, self.mean.shape[1]), dtype=np.float32)
        return x / np.linalg.norm(x, axis=1, keepdims=True)


class Database:
    """The real objects first, then synthetic photos of 8 objects, generated chunk by chunk (same seed, same data)."""

    def __init__(self, real: np.ndarray, real_owner: np.ndarray, mixture: Mixture, n: int, seed: int = 1):
        self.real, self.real_owner, self.mixture, self.n, self.seed = real, real_owner, mixture, n, seed
        self.n_real_photos = int(real_owner.max()) + 1
        self.n_photos = self.n_real_photos + (n - len(real)) // OBJECTS_PER_PHOTO

    def owner(self, ids: np.ndarray) -> np.ndarray:
        ids = np.asarray(ids, np.int64)
        synth = self.n_real_photos + (ids - len(self.real)) // OBJECTS_PER_PHOTO
        return np.where(ids < len(self.real), self.real_owner[np.minimum(ids, len(self.real) - 1)], synth)

    def chunks(self):  # noqa: ANN201 - iterator of (first id, vectors)
        yield 0, self.real
        rng = np.random.default_rng(self.seed)
        n_synth = (self.n - len(self.real)) // OBJECTS_PER_PHOTO * OBJECTS_PER_PHOTO
        for lo in range(0, n_synth, CHUNK):
            yield len(self.real) + lo, self.mixture.sample(min(CHUNK, n_synth - lo), rng)


def fast_pq_roundtrip(codec: Codec) -> Callable[[np.ndarray], np.ndarray]:
    """The pq codec's encode+decode with faiss doing the encoding (the same nearest-centroid codes, threaded)."""
    import faiss

    m, k, _ = codec.centroids.shape
    pq = faiss.ProductQuantizer(codec.dim, m, int(np.log2(k)))
    faiss.copy_array_to_vector(codec.centroids.ravel(), pq.centroids)
    return lambda x: codec.decode(pq.compute_codes(np.ascontiguousarray(x, np.float32)))


def exact_top(db: Database, queries: list[np.ndarray], codec: Codec | None = None) -> list[np.ndarray]:
    """Eq. 7 by brute force: the TOP photos per query (over float32 vectors, or what `codec` stores)."""
    roundtrip = fast_pq_roundtrip(codec) if codec is not None else None
    best = [np.full(db.n_photos, np.inf, np.float32) for _ in queries]
    flat = np.concatenate(queries)
    bounds = np.cumsum([0] + [len(q) for q in queries])
    for first, vec in db.chunks():
        if roundtrip is not None:
            vec = roundtrip(vec)
        d = squared_l2(flat, vec)
        owners = db.owner(np.arange(first, first + len(vec)))
        for i in range(len(queries)):
            per_obj = d[bounds[i] : bounds[i + 1]].min(0)
            np.minimum.at(best[i], owners, per_obj)
    return [np.argsort(b, kind="stable")[:TOP] for b in best]


def recall(found: list[np.ndarray], truth: list[np.ndarray]) -> float:
    return float(np.mean([len(set(f[:TOP].tolist()) & set(t.tolist())) / TOP for f, t in zip(found, truth)]))


def sources_kept(found: list[np.ndarray], truth: list[np.ndarray], sources: list[set[int]]) -> float | None:
    """Of the true sources (host, donor) exact search puts in its top 10, the share the structure's top 10 keeps."""
    pairs = [(set(f[:TOP].tolist()), s) for f, t, s in zip(found, truth, sources) for s in s & set(t.tolist())]
    return float(np.mean([s in f for f, s in pairs])) if pairs else None


def rank_photos(db: Database, ids: np.ndarray, dists: np.ndarray) -> np.ndarray:
    """Photos by the smallest distance of any of their objects found (Eq. 7 over what the structure returned)."""
    ok = ids >= 0
    owners, d = db.owner(ids[ok]), dists[ok]
    order = np.lexsort((d, owners))
    first = np.r_[True, owners[order][1:] != owners[order][:-1]]
    photos, best = owners[order][first], d[order][first]
    return photos[np.argsort(best, kind="stable")][:TOP]


SOURCES: list[set[int]] = []


def bench_graph(db: Database, codec: Codec, queries: list[np.ndarray], truth: list[np.ndarray], work: Path) -> dict:
    stored = np.concatenate([codec.encode(v) for _, v in db.chunks()])  # what the index stores
    owners = db.owner(np.arange(len(stored)))
    rss0, t0 = rss_bytes(), time.perf_counter()
    graph = Graph.build(codec.decode(stored), **OBJECT_GRAPH)
    build = time.perf_counter() - t0
    mem = rss_bytes() - rss0
    path = work / f"graph-{db.n}.hnsw"
    graph.index.save_index(str(path))
    disk = path.stat().st_size
    path.unlink()
    # photo -> its object rows, for the exact re-rank
    order = np.argsort(owners, kind="stable")
    starts = np.searchsorted(owners[order], np.arange(db.n_photos + 1))
    times, found = [], []
    k = max(64, 8 * TOP)
    for q in queries:
        t = time.perf_counter()
        rows, _ = graph.knn(q, k, ef=2 * k)
        photos = np.unique(owners[rows.ravel()])
        cand = np.concatenate([order[starts[p] : starts[p + 1]] for p in photos])
        d = codec.distances(q, stored[cand]).min(0)
        found.append(rank_photos(db, cand, d))
        times.append(time.perf_counter() - t)
    return {
        "build_s": build,
        "structure_B": disk / db.n,
        "codes_B": codec.code_size,
        "memory_B": mem / db.n,
        "p50_ms": 1e3 * np.percentile(times, 50),
        "p99_ms": 1e3 * np.percentile(times, 99),
        "recall@10": recall(found, truth),
        "sources_kept": sources_kept(found, truth, SOURCES),
    }


def bench_pq(
    db: Database,
    codec: Codec,
    queries: list[np.ndarray],
    truth: list[np.ndarray],
    work: Path,
    nprobes: list[int],
    k: int,
    truth_codes: list[np.ndarray],
) -> list[dict]:
    """One build, one row per nprobe."""
    nlist = nlist_for(db.n)
    rng = np.random.default_rng(2)
    train = np.concatenate([db.real, db.mixture.sample(min(db.n, 64 * nlist), rng)])
    side = np.lib.format.open_memmap(work / f"f16-{db.n}.npy", "w+", np.float16, (db.n, codec.dim))
    rss0, t0 = rss_bytes(), time.perf_counter()
    ivf = IVFPQ.create(codec.centroids, train, nlist)
    for first, vec in db.chunks():
        ivf.add(vec, np.arange(first, first + len(vec)))
        side[first : first + len(vec)] = vec  # the float16 side file of the re-ranking variant (not timed as build)
    build = time.perf_counter() - t0
    mem = rss_bytes() - rss0
    side.flush()
    photo_first = np.searchsorted(db.owner(np.arange(db.n)), np.arange(db.n_photos + 1))  # rows of each photo
    path = work / f"ivfpq-{db.n}.faiss"
    ivf.save(path)
    disk = path.stat().st_size
    path.unlink()
    rows = []
    for nprobe in nprobes:
        times, found = [], []
        for q in queries:
            t = time.perf_counter()
            ids, d = ivf.search(q, k, nprobe)
            found.append(rank_photos(db, ids.ravel(), d.ravel()))
            times.append(time.perf_counter() - t)
        rows.append(
            {
                "build_s": build,
                "structure_B": disk / db.n,
                "codes_B": 0,
                "memory_B": mem / db.n,
                "p50_ms": 1e3 * np.percentile(times, 50),
                "p99_ms": 1e3 * np.percentile(times, 99),
                "recall@10": recall(found, truth),
                "recall@10_codes": recall(found, truth_codes),
                "sources_kept": sources_kept(found, truth, SOURCES),
                "nlist": nlist,
                "nprobe": nprobe,
                "k": k,
            }
        )
        # variant: the candidate photos re-ranked exactly over float16 vectors read from a memory-mapped side file
        times, found = [], []
        for q in queries:
            t = time.perf_counter()
            ids, _ = ivf.search(q, k, nprobe)
            photos = np.unique(db.owner(ids[ids >= 0]))
            cand = np.concatenate([np.arange(photo_first[p], photo_first[p + 1]) for p in photos])
            d = squared_l2(q, side[cand].astype(np.float32)).min(0)
            found.append(rank_photos(db, cand, d))
            times.append(time.perf_counter() - t)
        rows.append(
            {
                "build_s": build,
                "structure_B": disk / db.n,
                "codes_B": 2 * codec.dim,
                "memory_B": mem / db.n,
                "p50_ms": 1e3 * np.percentile(times, 50),
                "p99_ms": 1e3 * np.percentile(times, 99),
                "recall@10": recall(found, truth),
                "recall@10_codes": None,
                "sources_kept": sources_kept(found, truth, SOURCES),
                "nlist": nlist,
                "nprobe": nprobe,
                "k": k,
                "rerank": "float16 side file",
            }
        )
    del side
    (work / f"f16-{db.n}.npy").unlink()
    return rows


def query_sources(queries: Path, n: int, paths: list[str]) -> list[set[int]]:
    """Real-photo ids of each query's host and donor (from the set's truth.jsonl)."""
    by_name = {Path(p).name: i for i, p in enumerate(paths)}
    truth = {}
    for line in (queries.parent / "truth.jsonl").read_text().splitlines():
        t = json.loads(line)
        truth[t["query"]] = {by_name[t[r]] for r in ("host", "donor") if t.get(r) in by_name}
    files = sorted(p for p in queries.iterdir() if p.is_file())[:n]
    return [truth.get(f.name, set()) for f in files]


def query_embeddings(index: Path, queries: Path, n: int, work: Path) -> list[np.ndarray]:
    cache = work / f"queries-{n}.npz"
    if cache.exists():
        with np.load(cache) as z:
            return [z[str(i)] for i in range(len(z.files))]
    searcher = api.open_searcher(index)
    files = sorted(p for p in queries.iterdir() if p.is_file())[:n]
    out = [searcher.engine.objects(load_rgb(f))[1].astype(np.float32) for f in files]
    np.savez(cache, **{str(i): q for i, q in enumerate(out)})
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--index", type=Path, required=True, help="float32 oesir index of the standard database")
    ap.add_argument("--queries", type=Path, required=True)
    ap.add_argument("--n-queries", type=int, default=100)
    ap.add_argument("--sizes", default="100000,1000000,10000000")
    ap.add_argument("--codecs", default="float32,float16,pq")
    ap.add_argument("--graph-max", type=int, default=1_000_000)
    ap.add_argument("--nprobe", default="16,64,256", help="inverted lists probed (pq), comma-separated: one row each")
    ap.add_argument("--k", type=int, default=100, help="objects fetched per query object from IVF-PQ")
    ap.add_argument("--work", type=Path, default=Path("/tmp/oesir-scale"))
    ap.add_argument("--merge", type=Path, help="scale.json rows of an earlier run to print in the same table")
    args = ap.parse_args()
    args.work.mkdir(parents=True, exist_ok=True)

    store = Store(args.index)
    catalogue = store.load_all()
    if catalogue.codec.name != "float32":
        sys.exit("--index must be a float32 index (the real vectors are the reference)")
    real, real_owner = catalogue.embeddings.copy(), catalogue.object_image.astype(np.int64)
    config = api._config_of(store)
    pq = Codec("pq", real.shape[1], np.load(verified_file(config.codebook_file())[0])["centroids"])
    queries = query_embeddings(args.index, args.queries, args.n_queries, args.work)
    SOURCES[:] = query_sources(args.queries, args.n_queries, catalogue.paths)
    mixture = Mixture(real)
    print(
        f"real objects {len(real)} of {len(catalogue.paths)} photos; {len(queries)} query photos, "
        f"{sum(len(q) for q in queries) / len(queries):.1f} objects each",
        file=sys.stderr,
    )

    nprobes = [int(v) for v in args.nprobe.split(",")]
    rows = []
    for n in (int(s) for s in args.sizes.split(",")):
        db = Database(real, real_owner, mixture, n)
        t = time.perf_counter()
        truth = exact_top(db, queries)
        print(f"N={n}: exact search {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
        for name in args.codecs.split(","):
            if name != "pq" and n > args.graph_max:
                rows.append({"N": n, "codec": name, "skipped": f"graph build above --graph-max {args.graph_max}"})
                continue
            if name == "pq":
                t = time.perf_counter()
                truth_codes = exact_top(db, queries, pq)
                print(f"N={n}: exact search over the pq codes {time.perf_counter() - t:.0f} s", file=sys.stderr, flush=True)
                for r in bench_pq(db, pq, queries, truth, args.work, nprobes, args.k, truth_codes):
                    rows.append({"N": n, "codec": name, **r})
                    print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
                continue
            r = bench_graph(db, Codec(name, real.shape[1]), queries, truth, args.work)
            rows.append({"N": n, "codec": name, **r})
            print(json.dumps(rows[-1]), file=sys.stderr, flush=True)
    if args.merge:
        rows = json.loads(args.merge.read_text()) + rows
    (args.work / "scale.json").write_text(json.dumps(rows, indent=1))
    print(table(rows))


def table(rows: list[dict]) -> str:
    out = [
        "| N objects | codec | structure | build s | disk B/object (structure + codes) | memory B/object | "
        "p50 ms/query photo | p99 ms | recall@10 vs exact | recall@10 vs exact on the codes | true sources kept |",
        "|" + " --- |" * 11,
    ]
    order = ["float32", "float16", "pq"]
    for r in sorted(rows, key=lambda r: (r["N"], order.index(r["codec"]), bool(r.get("rerank")), r.get("nprobe", 0))):
        if "skipped" in r:
            out.append(f"| {r['N']:,} | {r['codec']} | not built: {r['skipped']} |" + "  |" * 8)
            continue
        structure = "hnswlib M=16" if r["codec"] != "pq" else f"faiss IVF{r['nlist']}-PQ32, nprobe {r['nprobe']}"
        if r.get("rerank"):
            structure += ", + exact re-rank from a float16 side file"
        disk = r["structure_B"] + r["codes_B"]
        codes_recall = f"{r['recall@10_codes']:.3f}" if r.get("recall@10_codes") is not None else "(same)"
        kept = f"{r['sources_kept']:.3f}" if r.get("sources_kept") is not None else "-"
        out.append(
            f"| {r['N']:,} | {r['codec']} | {structure} | {r['build_s']:.0f} | {disk:.0f} ({r['structure_B']:.0f} + "
            f"{r['codes_B']}) | {r['memory_B']:.0f} | {r['p50_ms']:.1f} | {r['p99_ms']:.1f} | {r['recall@10']:.3f} | "
            f"{codes_recall} | {kept} |"
        )
    return "\n".join(out)


if __name__ == "__main__":
    main()
