"""Learning the weights oesir derives from training photos: PCA whitening and the PQ codebook.

Both are statistics of region descriptors of photos that are never part of a
benchmark database; each file written is listed in the weights manifest with
the command that rebuilds it.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import numpy as np

from .codec import save_codebook, train_codebook
from .embed import Whitening, learn_whitening
from .engine import STORED_DEFAULTS, Engine, EngineConfig
from .imageio import load_rgb
from .indexer import walk
from .registry import add_manifest_entry, verified_file, weights_dir

# The whitening and the PQ codebook are learned on the float networks' descriptors; their int8 copies share them
# (`registry.QUANTISED_SPECS`), as their descriptors differ only by int8 rounding.
LEARNING_CONFIG = EngineConfig(teacher=STORED_DEFAULTS["teacher"], detector=STORED_DEFAULTS["detector"])


def _training_regions(
    images: str | os.PathLike,
    describe: Callable[[np.ndarray], list[np.ndarray]],
    progress: Callable[[int, int], None] | None,
) -> tuple[np.ndarray, int]:
    """All region vectors `describe` gives for the training photos under `images`, and the photo count."""
    files = sorted(walk([images], []))
    if not files:
        raise ValueError(f"no photos under {images}")
    out = []
    for i, f in enumerate(files):
        if progress:
            progress(i, len(files))
        out += describe(load_rgb(f))
    return np.concatenate(out), len(files)


def _model_flag(config: EngineConfig) -> str:
    return "" if config.model == "teacher" else f" --model {config.model}"


def learn_whitening_file(
    images: str | os.PathLike,
    dim: int = 256,
    config: EngineConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
    weights: Path | None = None,
) -> Path:
    """Learn PCA whitening on the region descriptors of training photos; write it and its manifest entry.

    Regions: the whole photo and the class-agnostic detections of `engine.TRAINING_REGIONS`,
    described by the engine's feature maps (teacher, or the distilled student).
    """
    config = config or LEARNING_CONFIG
    regions = Engine.region_describer(config, weights)
    descs, count = _training_regions(images, lambda rgb: [regions(rgb)], progress)
    whitening = learn_whitening(descs, dim)
    path = (weights or weights_dir()) / config.whitening_file()
    whitening.save(path)
    add_manifest_entry(
        path,
        {
            "model": f"whitening for {config.features_name()}",
            "source": {"photos": str(images), "count": count, "regions": len(descs)},
            "licence": "derived statistics (PCA of region features) of the training photos; see LICENSES.md",
            "preprocessing": "input: concatenated L2-normalised max-pooled s32 and s16 features of a box",
            "command": f"oesir weights whiten --images {images} --dim {dim}" + _model_flag(config),
        },
    )
    return path


def learn_codebook_file(
    images: str | os.PathLike,
    config: EngineConfig | None = None,
    progress: Callable[[int, int], None] | None = None,
    weights: Path | None = None,
) -> Path:
    """Learn the PQ codebook (`--codec pq`) on whitened region embeddings of training photos; write it + manifest entry.

    Regions as for the whitening (`engine.TRAINING_REGIONS`),
    of each photo and of its mirror image, whitened with the configuration's whitening.
    """
    config = config or LEARNING_CONFIG
    regions = Engine.region_describer(config, weights)
    whitening = Whitening.load(verified_file(config.whitening_file(), weights)[0])
    embs, count = _training_regions(
        images, lambda rgb: [whitening.apply(regions(x)) for x in (rgb, np.ascontiguousarray(rgb[:, ::-1]))], progress
    )
    centroids = train_codebook(embs)
    path = (weights or weights_dir()) / config.codebook_file()
    save_codebook(path, centroids)
    add_manifest_entry(
        path,
        {
            "model": f"PQ codebook for {config.features_name()} ({centroids.shape[0]} x {centroids.shape[1]} centroids)",
            "source": {"photos": str(images), "count": count, "vectors": len(embs)},
            "licence": "derived statistics (k-means of whitened region features) of the training photos; see LICENSES.md",
            "preprocessing": f"input: embeddings whitened by {config.whitening_file()}, photos and their mirror images",
            "command": f"oesir weights pq --images {images}" + _model_flag(config),
        },
    )
    return path


def learn_vocabulary_file(
    images: str | os.PathLike,
    progress: Callable[[int, int], None] | None = None,
    weights: Path | None = None,
) -> Path:
    """Learn the local-feature vocabulary and residual PQ codebook (vocabulary.py) on the RootSIFT
    descriptors of training photos, as stored (`keypoints.extract` defaults) and mirrored; write it + manifest entry."""
    from .keypoints import STORED_KEYPOINTS, extract, mirrored
    from .vocabulary import COARSE, FINE, PQ_SUBSPACES, VOCABULARY_FILE, as_float, train_vocabulary

    def both(rgb: np.ndarray) -> list[np.ndarray]:
        f = extract(rgb, STORED_KEYPOINTS)
        return [f.descriptors, mirrored(f, rgb.shape[1]).descriptors]

    descs, count = _training_regions(images, both, progress)
    vocabulary = train_vocabulary(as_float(descs))
    path = (weights or weights_dir()) / VOCABULARY_FILE
    vocabulary.save(path)
    add_manifest_entry(
        path,
        {
            "model": f"RootSIFT visual vocabulary ({COARSE} x {FINE} words, hierarchical k-means) and "
            f"PQ codebook of residuals ({PQ_SUBSPACES} x 256 centroids)",
            "source": {"photos": str(images), "count": count, "descriptors": len(descs)},
            "licence": "derived statistics (k-means of RootSIFT descriptors) of the training photos; see LICENSES.md",
            "preprocessing": f"input: RootSIFT (keypoints.extract, {STORED_KEYPOINTS} keypoints) of each photo "
            "and of its mirror image, as float (uint8 / 255)",
            "command": f"oesir weights vocabulary --images {images}",
        },
    )
    return path
