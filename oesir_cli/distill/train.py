"""Train a student on the crop cache: MSE to the teacher's maps (Eq. 6), Adam, cosine decay.

Deterministic for a seed: batch b of step s is drawn from a generator seeded by
(seed, s), so a run resumed from a checkpoint continues with exactly the batches
the uninterrupted run would have seen. Checkpoints are written atomically.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from ..store import atomic_write
from .data import CropCache
from .model import Student


@dataclass(frozen=True)
class TrainConfig:
    variant: str = "s3"
    iterations: int = 3000
    batch: int = 32
    lr: float = 1e-3
    seed: int = 0
    width: int = 160
    save_every: int = 100


def _batch(cache: dict[str, np.ndarray], names: tuple[str, ...], rows: np.ndarray) -> dict[str, torch.Tensor]:
    rows = np.sort(rows)  # memmap reads in order
    return {n: torch.from_numpy(np.ascontiguousarray(cache[n][rows]).astype(np.float32)) for n in names}


def map_scales(cache: CropCache, sample: int = 256) -> dict[str, float]:
    """Mean square of each teacher map over a sample of crops, so both maps weigh alike in the loss."""
    n = min(sample, cache.count)
    return {k: float(np.mean(np.square(cache.array(k)[:n].astype(np.float32)))) for k in ("s16", "s32")}


def train(
    cache: CropCache,
    config: TrainConfig,
    checkpoint: Path,
    resume: bool = False,
    progress: Callable[[int, int, float], None] | None = None,
) -> tuple[Student, list[float]]:
    """Train (or resume) and return the student in eval mode and the loss per step of this run."""
    torch.manual_seed(config.seed)
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    model = Student(config.variant, config.width)
    opt = torch.optim.Adam(model.parameters(), lr=config.lr)
    start, scales = 0, map_scales(cache)
    if resume and checkpoint.exists():
        state = torch.load(checkpoint, map_location="cpu", weights_only=False)
        if state["config"] != asdict(config):
            raise ValueError(f"checkpoint {checkpoint} was made with other settings: {state['config']}")
        model.load_state_dict(state["model"])
        opt.load_state_dict(state["optimizer"])
        start, scales = state["step"], state["scales"]
        torch.set_rng_state(state["torch_rng"])
    arrays = {n: cache.array(n) for n in (*model.inputs(), "s16", "s32")}
    losses: list[float] = []
    model.train()
    for step in range(start, config.iterations):
        for group in opt.param_groups:
            group["lr"] = config.lr * 0.5 * (1 + math.cos(math.pi * step / config.iterations))
        rows = np.random.default_rng([config.seed, step]).choice(cache.count, config.batch, replace=False)
        b = _batch(arrays, (*model.inputs(), "s16", "s32"), rows)
        s16, s32 = model(*(b[k] for k in model.inputs()))
        loss = torch.mean((s16 - b["s16"]) ** 2) / scales["s16"] + torch.mean((s32 - b["s32"]) ** 2) / scales["s32"]
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
        if progress:
            progress(step + 1, config.iterations, losses[-1])
        if (step + 1) % config.save_every == 0 or step + 1 == config.iterations:
            state = {
                "model": model.state_dict(),
                "optimizer": opt.state_dict(),
                "step": step + 1,
                "config": asdict(config),
                "scales": scales,
                "torch_rng": torch.get_rng_state(),
                "last_loss": losses[-1],
            }
            atomic_write(checkpoint, lambda tmp, state=state: torch.save(state, tmp))
    return model.eval(), losses
