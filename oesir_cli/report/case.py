"""One suspect photo examined for a report: search, localization against host and donors, pictures.

Everything here goes through `oesir_cli.api` (`localize_auto`: the search and
the localizations `oesir localize --auto` runs); this module only decides what
to draw and keeps the numbers a page shows.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .. import api
from ..choices import Role
from ..imageio import ImageError, load_rgb
from ..localize import LocalizeResult
from ..registry import sha256_file
from ..render import overlay_image
from ..search import Match, Searcher, SearchResult
from . import figures
from .facts import PhotoFacts, photo_facts

HOST_COLOUR: figures.Colour = (229, 57, 53)  # red: what was changed in the host
DONOR_COLOURS: tuple[figures.Colour, ...] = (
    (30, 136, 229),  # blue
    (67, 160, 71),  # green
    (251, 140, 0),  # orange
    (142, 36, 170),  # purple
    (0, 172, 193),  # teal
    (216, 27, 96),  # pink
)

SaveImage = Callable[[str, np.ndarray], str]  # (name, RGB) -> the file's name relative to the report folder


def hex_colour(c: figures.Colour) -> str:
    return "#{:02x}{:02x}{:02x}".format(*c)


@dataclass
class Source:
    """A ranked photo as a report shows it, and, for the host and each donor, its localization."""

    rank: int
    match: Match
    label: str  # "host", "donor1", ... ; "" for a candidate
    current_sha256: str | None  # the file's hash now (None: it cannot be read any more)
    colour: figures.Colour | None = None
    localized: LocalizeResult | None = None
    error: str | None = None  # why it could not be localized
    pictures: dict[str, str] = field(default_factory=dict)  # "suspect", "original", "heat", "thumb" -> file
    thumb_size: tuple[int, int] = (0, 0)  # (width, height) of the thumbnail

    @property
    def role(self) -> Role:
        return self.match.role

    @property
    def name(self) -> str:
        return os.path.basename(self.match.image)

    @property
    def unchanged_since_indexed(self) -> bool | None:
        """Whether the file still has the bytes it was indexed with (None: unknown)."""
        if self.current_sha256 is None or self.match.sha256 is None:
            return None
        return self.current_sha256 == self.match.sha256


@dataclass
class SuspectCase:
    """Everything one suspect photo's page shows."""

    path: str
    facts: PhotoFacts
    result: SearchResult | None = None
    sources: list[Source] = field(default_factory=list)  # every ranked photo, in ranking order
    error: str | None = None  # why it could not be examined
    pictures: dict[str, str] = field(default_factory=dict)  # "summary", "suspect", "thumb" -> file
    thumb_size: tuple[int, int] = (0, 0)

    @property
    def shown(self) -> list[Source]:
        """The host first, then the donors: the sources with a page of their own."""
        return [s for s in self.sources if s.label]

    def as_dict(self) -> dict:
        out: dict = {"suspect": self.path, "facts": self.facts.as_dict(), "error": self.error, "pictures": self.pictures}
        if self.result is not None:
            out.update(verdict=None if self.result.verdict is None else self.result.verdict.value)
            out["region_box"] = self.result.region_box
        out["sources"] = [
            {
                "rank": s.rank,
                **s.match.as_dict(),
                "label": s.label or None,
                "current_sha256": s.current_sha256,
                "localization": s.localized.as_dict() if s.localized else None,
                "localization_error": s.error,
                "pictures": s.pictures,
            }
            for s in self.sources
        ]
        return out


def examine(
    searcher: Searcher, path: str | os.PathLike, save: SaveImage, top: int = 10, threshold: float | None = None
) -> SuspectCase:
    """Search the index for the photo at `path`, localize it against its host and every donor, draw the pictures.

    An unreadable photo is a case with `error` set (its page says so); index and
    model errors propagate.
    """
    facts = photo_facts(path)
    case = SuspectCase(os.fspath(path), facts)
    if facts.error:
        case.error = facts.error
        return case
    try:
        suspect = load_rgb(path)
        plan, runs = api.localize_auto(path, searcher=searcher, top=top, threshold=threshold)
    except ImageError as exc:
        case.error = str(exc)
        return case
    case.result = plan.result
    labels = {os.fspath(o.original): o.label for o in plan.originals}
    donors = 0
    for rank, m in enumerate(plan.result.matches if plan.result else [], 1):
        label = labels.get(m.image, "")
        colour = None
        if m.role is Role.HOST:
            colour = HOST_COLOUR
        elif m.role is Role.DONOR:
            colour = DONOR_COLOURS[donors % len(DONOR_COLOURS)]
            donors += 1
        case.sources.append(Source(rank, m, label, _current_sha256(m.image), colour))
    by_label = {s.label: s for s in case.sources if s.label}
    for done in runs:
        source = by_label[done.label]
        source.localized = done.result
        source.error = None if done.error is None else str(done.error)
    view, _ = figures.display_view(suspect)
    case.pictures["suspect"] = save("suspect.png", view)
    case.pictures["thumb"], case.thumb_size = _save_thumb(save, "suspect-thumb.png", suspect)
    for s in case.sources:
        if s.label:
            _draw_source(s, suspect, view, save)
    case.pictures["summary"] = save("summary.png", _summary(view, case.shown))
    return case


def _current_sha256(image: str) -> str | None:
    try:
        return sha256_file(Path(image))
    except OSError:
        return None


def _save_thumb(save: SaveImage, name: str, rgb: np.ndarray) -> tuple[str, tuple[int, int]]:
    thumb = figures.display_view(rgb, figures.THUMB_SIDE)[0]
    return save(name, thumb), (thumb.shape[1], thumb.shape[0])


def _draw_source(s: Source, suspect: np.ndarray, view: np.ndarray, save: SaveImage) -> None:
    """The pictures of the host's or a donor's page (the original's thumbnail even when it did not align)."""
    try:
        original = load_rgb(s.match.image)
    except ImageError as exc:
        s.error = s.error or str(exc)
        return
    o_view, o_scale = figures.display_view(original)
    s.pictures["thumb"], s.thumb_size = _save_thumb(save, f"{s.label}-thumb.png", original)
    r = s.localized
    if r is None:
        s.pictures["original"] = save(f"{s.label}.png", o_view)
        return
    assert s.colour is not None
    q_scale = view.shape[1] / suspect.shape[1]
    mask = figures.fit_mask(r.mask, view.shape)
    came_from = _came_from(r, mask, o_view.shape, o_scale, q_scale)
    if s.role is Role.HOST:  # the change tinted in the suspect; in the host, the area it covers
        s.pictures["suspect"] = save(f"{s.label}-change.png", overlay_image(view, mask, s.colour))
        s.pictures["original"] = save(f"{s.label}-covered.png", figures.outlined(o_view, [(came_from, s.colour)]))
    else:  # the pasted region in the suspect; in the donor, where it was taken from
        s.pictures["suspect"] = save(f"{s.label}-pasted.png", figures.outlined(view, [(mask, s.colour)], tint=0.2))
        s.pictures["original"] = save(f"{s.label}-source.png", figures.outlined(o_view, [(came_from, s.colour)], tint=0.2))
    s.pictures["heat"] = save(f"{s.label}-heat.png", figures.heat_blend(view, r.heatmap))


def _came_from(r: LocalizeResult, mask: np.ndarray, o_shape: tuple[int, ...], o_scale: float, q_scale: float) -> np.ndarray:
    """Where the localized region came from in the original: each placement's part of `mask` (suspect view)
    pulled back through that placement's own transform (a donor may be pasted in several places)."""
    placements = [r.alignment, *r.further_placements]
    owner = figures.fit_mask(r.placement, mask.shape) if r.placement is not None else (mask > 0).astype(np.uint8)
    out = np.zeros(o_shape[:2], np.uint8)
    for k, p in enumerate(placements, start=1):
        part = np.where((mask > 0) & (owner == k), 255, 0).astype(np.uint8)
        if part.any():
            h = figures.scaled_homography(p.homography, o_scale, q_scale)
            out |= figures.source_region(part, h, o_shape)
    return out


def _summary(view: np.ndarray, shown: list[Source]) -> np.ndarray:
    """The suspect with every localized region outlined in its source's colour: the host's change, each donor's paste."""
    regions = [(s.localized.mask, s.colour) for s in shown if s.localized is not None and s.colour is not None]
    return figures.outlined(view, regions, tint=0.15)
