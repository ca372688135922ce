"""Describing photos on this machine's cores: a pool of worker processes, one engine each.

One process cannot keep two cores busy: onnxruntime's intra-op threads scale
poorly on these small convolutions (threads that do not spin, because search
interleaves other work), and SIFT overlaps only part of the networks' time.
Separate processes, each with one onnxruntime thread, describe photos side by
side instead. Like the Ray actors (cluster.py), workers only extract: this
process receives each photo's description and commits it, so an interrupted
run keeps every committed batch. Workers ignore Ctrl-C; the parent stops them.
"""

from __future__ import annotations

import multiprocessing
import multiprocessing.connection
import os
import signal
import threading
from collections.abc import Iterator
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool

from . import keypoints
from .engine import Engine, EngineConfig
from .errors import OesirError
from .indexer import Described, Describer, describe_file, local_describer
from .memory import keep_freed_memory
from .store import ImageRecord

WORKER_CHUNK = 4  # photos per task: results stream back as they are made
TASKS_PER_WORKER = 2  # tasks queued per worker, so none waits for the parent
# Below this many photos, starting the workers (each loads the models, ~2 s) costs more than it saves.
POOL_MIN_PHOTOS = 48
WORKER_THREADS = 1  # onnxruntime and SIFT threads per worker: SIFT runs after the networks, on the same core

_worker_engine: Engine | None = None
_worker_max_pixels = 0


class WorkerError(OesirError):
    """Workers asked for wrongly, or one died (killed, out of memory); the committed batches stay."""


def check_workers(workers: int | None, ray: str | None) -> None:
    """WorkerError unless `workers` (None: the default) is a usable number of processes, given `ray`."""
    if workers is not None and workers < 1:
        raise WorkerError(f"--workers must be at least 1, not {workers}")
    if workers is not None and ray is not None:
        raise WorkerError("--workers and --ray are alternatives: Ray runs one describer per CPU of its cluster")


def default_workers() -> int:
    """The cores this process may run on."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


def pool_describer(engine: Engine, max_pixels: int, workers: int, min_photos: int = POOL_MIN_PHOTOS) -> Describer:
    """A `Describer` over `workers` processes; fewer than `min_photos` photos (or one worker) are described here by
    `engine`. Photos come back in the order they are done, not the order given."""

    def run(records: list[ImageRecord]) -> Iterator[Described]:
        if workers < 2 or len(records) < max(min_photos, 2):
            yield from local_describer(engine, max_pixels)(records)
            return
        yield from _pooled(engine.config, max_pixels, min(workers, len(records)), records)

    return run


def _pooled(config: EngineConfig, max_pixels: int, workers: int, records: list[ImageRecord]) -> Iterator[Described]:
    chunks = [records[i : i + WORKER_CHUNK] for i in range(0, len(records), WORKER_CHUNK)]
    pool = ProcessPoolExecutor(
        workers,
        mp_context=multiprocessing.get_context("spawn"),  # no copy of this process's threads and open files
        initializer=_start_worker,
        initargs=(config.as_dict(), max_pixels),
    )
    pending: set[Future] = set()
    try:
        todo = iter(chunks)
        for chunk in todo:
            pending.add(pool.submit(_describe_chunk, chunk))
            if len(pending) >= workers * TASKS_PER_WORKER:
                break
        while pending:
            done, pending = wait(pending, return_when=FIRST_COMPLETED)
            for fut in done:
                try:
                    described = fut.result()
                except BrokenProcessPool as exc:
                    raise WorkerError("a worker process died while describing photos; run `oesir index` again") from exc
                nxt = next(todo, None)
                if nxt is not None:
                    pending.add(pool.submit(_describe_chunk, nxt))
                yield from described
    finally:
        pool.shutdown(wait=not pending, cancel_futures=True)


def _start_worker(config: dict, max_pixels: int) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    threading.Thread(target=_exit_with_parent, daemon=True).start()
    os.environ["OESIR_THREADS"] = str(WORKER_THREADS)  # read when the onnxruntime sessions are made
    keypoints.use_threads(WORKER_THREADS)
    keep_freed_memory()  # a worker's photos reuse the same buffers (memory.py)
    global _worker_engine, _worker_max_pixels
    _worker_engine = Engine(EngineConfig.stored(config), overlap_keypoints=False)  # one core per worker
    _worker_max_pixels = max_pixels


def _exit_with_parent() -> None:
    """A worker whose parent is killed (`kill -9`, out of memory) would wait for work forever: it exits instead."""
    parent = multiprocessing.parent_process()
    if parent is not None:
        multiprocessing.connection.wait([parent.sentinel])
        os._exit(1)


def _describe_chunk(records: list[ImageRecord]) -> list[Described]:
    assert _worker_engine is not None, "worker not started"
    return [describe_file(_worker_engine, rec, _worker_max_pixels) for rec in records]
