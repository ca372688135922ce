"""Describing photos on a Ray cluster: Ray Data `map_batches` over a pool of actors, one engine each.

`oesir index --ray local` starts a Ray cluster on this machine for the run;
`--ray ADDRESS` joins a running one (`auto`, `HOST:PORT`, `ray://HOST:10001`).
Actors only extract (detector, teacher, RootSIFT): the driver receives each
photo's description and writes it, batch by batch, to whichever back end the
index uses, so an interrupted job keeps every committed batch and a re-run
describes only what is missing. Photos are read by the actors from their
paths: every node must see the files at the same paths (a shared file system).
Nothing imports Ray unless `--ray` is given.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
import socket
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from .engine import EngineConfig
from .errors import OesirError
from .indexer import Described, Describer, describe_file
from .store import ImageRecord

os.environ.setdefault("GRPC_VERBOSITY", "NONE")  # gRPC's own log lines are not the user's business; errors raise
ACTOR_BATCH = 4  # photos per actor call: small, so results stream back to the driver as they are made
CPUS_PER_ACTOR = 1  # each actor's onnxruntime runs this many threads (SIFT overlaps on one more)
LOCAL_OBJECT_STORE_BYTES = 256 * 1024**2  # `--ray local`: descriptions are small, photos are read by the actors
LOCAL_START_ATTEMPTS = 2
CONNECT_TIMEOUT_S = 5.0  # an address nothing listens on is refused after this long


class ClusterError(OesirError):
    """Ray is missing or the cluster cannot be reached; one line."""


class _DescribeActor:
    """One engine per actor; describes a batch of photos given by their records."""

    def __init__(self, config: dict[str, Any], max_pixels: int, threads: int):
        os.environ["OESIR_THREADS"] = str(threads)  # read when the onnxruntime sessions are made
        from . import keypoints
        from .engine import Engine
        from .memory import keep_freed_memory

        keypoints.use_threads(threads)
        keep_freed_memory()  # an actor's photos reuse the same buffers (memory.py)

        self.engine = Engine(EngineConfig.stored(config))
        self.max_pixels = max_pixels

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        out = []
        for raw in batch["record"]:
            rec = ImageRecord(*pickle.loads(raw))
            out.append(pickle.dumps(describe_file(self.engine, rec, self.max_pixels)))
        return {"described": out}


def ray_describer(config: EngineConfig, max_pixels: int, address: str) -> Describer:
    """A `Describer` that spreads photos over Ray actors (`address`: "local", "auto", or a cluster address)."""

    def run(records: list[ImageRecord]) -> Iterator[Described]:
        if not records:
            return
        ray = _import_ray()
        started = _connect(ray, address)
        try:
            blocks = max(1, -(-len(records) // ACTOR_BATCH))
            actors = min(blocks, max(1, int(ray.cluster_resources().get("CPU", 1) // CPUS_PER_ACTOR)))
            items = [{"record": pickle.dumps(_fields(r))} for r in records]
            ds = ray.data.from_items(items, override_num_blocks=blocks).map_batches(
                _DescribeActor,
                fn_constructor_kwargs={"config": config.as_dict(), "max_pixels": max_pixels, "threads": CPUS_PER_ACTOR},
                batch_size=ACTOR_BATCH,
                concurrency=actors,
                num_cpus=CPUS_PER_ACTOR,
                batch_format="numpy",
                max_restarts=0,  # a failed actor fails the run: its committed batches stay, a re-run does the rest
            )
            for batch in ds.iter_batches(batch_size=1, batch_format="numpy", prefetch_batches=actors):
                for raw in batch["described"]:
                    yield pickle.loads(raw)
        finally:
            if started:
                ray.shutdown()

    return run


@contextmanager
def ray_session(address: str) -> Iterator[None]:
    """Be connected to Ray (`address` as for `ray_describer`) for the block; a cluster started here stops at its end.

    `oesir index --ray` into Milvus enters this before it opens the index: Ray
    picks free ports and its raylet binds them a moment later, and a Milvus
    client opening connections in between can take one (the raylet then dies
    without a word and Ray waits 30 s for it). Started first, Ray has its ports.
    """
    ray = _import_ray()
    started = _connect(ray, address)
    try:
        yield
    finally:
        if started:
            ray.shutdown()


def _fields(rec: ImageRecord) -> tuple:
    return (rec.id, rec.path, rec.sha256, rec.size, rec.mtime_ns, rec.width, rec.height)


def _import_ray():  # noqa: ANN202 - ray is optional
    try:
        import ray
        import ray.data  # noqa: F401 - Ray Data is a separate import
    except ImportError:
        raise ClusterError("--ray needs `pip install 'oesir[cluster]'` (ray[data])") from None
    return ray


def _reachable(address: str) -> None:
    """Refuse at once an address nothing listens on (Ray itself retries for minutes)."""
    m = re.match(r"^(?:ray://)?\[?(?P<host>[^\]/]+?)\]?:(?P<port>\d+)/?$", address)
    if m is None:  # "local", "auto": Ray finds out quickly by itself
        return
    try:
        socket.create_connection((m.group("host"), int(m.group("port"))), timeout=CONNECT_TIMEOUT_S).close()
    except OSError as exc:
        raise ClusterError(f"cannot join the Ray cluster at {address}: {exc.strerror or exc}") from None


def _connect(ray: Any, address: str) -> bool:
    """Join `address` (or start a local cluster for "local"); True when this call started the connection."""
    if ray.is_initialized():
        return False
    quiet = {"log_to_driver": False, "include_dashboard": False, "logging_level": "ERROR"}
    _reachable(address)
    # A local start can miss Ray's fixed 30 s wait for its raylet on a loaded machine; one more try is cheap.
    attempts = LOCAL_START_ATTEMPTS if address == "local" else 1
    for attempt in range(1, attempts + 1):
        try:
            if address == "local":
                # address="local": a new instance even when `ray start` left a cluster running (ray.init() would join it)
                ray.init(address="local", num_cpus=os.cpu_count() or 1, object_store_memory=LOCAL_OBJECT_STORE_BYTES, **quiet)
            else:
                ray.init(address=address, **quiet)
            break
        except Exception as exc:  # Ray raises ConnectionError, RuntimeError, ValueError for an unreachable cluster
            ray.shutdown()  # whatever this try started, so the next one (or the user's re-run) begins clean
            if attempt == attempts:
                first = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise ClusterError(f"cannot join the Ray cluster at {address}: {first}") from None
    logging.getLogger("ray.data").setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=UserWarning, module=r"ray\..*")
    warnings.filterwarnings("ignore", message=".*ray_remote_args.*")
    context = ray.data.DataContext.get_current()
    context.enable_progress_bars = False  # oesir's own progress bar reports on stderr
    context.print_on_execution_start = False
    return True
