"""The report's HTML: one page per suspect and an index page, printable one section per A4 sheet.

Every string from outside (file names, EXIF, error messages) goes through
`esc`; pictures are files beside the page, referenced by relative name.
"""

from __future__ import annotations

import math
import os
from html import escape

from ..choices import Role, Verdict
from .case import HOST_COLOUR, Source, SuspectCase, hex_colour
from .custody import Reproducibility

LEADS_NOTE = (
    "Ranked photos are leads for an examiner, not findings. A role (host, donor) says that measured evidence "
    "supports it, as explained beside it; a candidate is only a near photo. Check every lead against the photos themselves."
)
CSS = """
:root { --ink: #1b1f24; --muted: #5b6470; --line: #d5d9de; --host: #e53935; }
* { box-sizing: border-box; }
body { font: 14px/1.45 "DejaVu Sans", Arial, sans-serif; color: var(--ink); margin: 0; background: #eef0f3; }
nav { padding: 10px 24px; }
.sheet { background: #fff; max-width: 1040px; margin: 16px auto; padding: 22px 28px; border: 1px solid var(--line); }
h1 { font-size: 22px; margin: 0 0 6px; word-break: break-all; }
h2 { font-size: 18px; margin: 0 0 10px; word-break: break-all; }
h3 { font-size: 14px; margin: 14px 0 6px; }
.verdict { font-size: 17px; font-weight: bold; padding: 8px 12px; border-radius: 4px; margin: 8px 0 12px; }
.verdict-sources { background: #fdecea; border-left: 6px solid var(--host); }
.verdict-copy { background: #fff4e0; border-left: 6px solid #fb8c00; }
.verdict-none { background: #e8f0fe; border-left: 6px solid #1e88e5; }
.verdict-error { background: #f3e5f5; border-left: 6px solid #8e24aa; }
.leads { font-size: 12.5px; color: #4a3b00; background: #fff8d6; border: 1px solid #f0dc8a; padding: 6px 10px; margin: 10px 0; }
.row { display: flex; gap: 14px; align-items: flex-start; flex-wrap: wrap; }
figure { margin: 0; flex: 1 1 0; min-width: 0; }
figure img { max-width: 100%; max-height: 420px; display: block; border: 1px solid var(--line); }
figcaption { font-size: 12px; color: var(--muted); margin-top: 4px; }
.diagram { flex: 0 0 360px; }
.diagram svg { width: 100%; height: auto; }
table { border-collapse: collapse; width: 100%; font-size: 12.5px; margin: 6px 0; }
th, td { text-align: left; vertical-align: top; padding: 3px 6px; border-bottom: 1px solid var(--line); }
th { color: var(--muted); font-weight: normal; white-space: nowrap; }
.path { word-break: break-all; }
.hash { font-family: "DejaVu Sans Mono", monospace; font-size: 11px; white-space: nowrap; }
.num { text-align: right; white-space: nowrap; }
.meaning { margin: 4px 0 10px; }
.swatch { display: inline-block; width: 14px; height: 14px; border-radius: 3px; vertical-align: -1px; margin-right: 6px; }
.role-host { color: var(--host); font-weight: bold; }
.role-donor { font-weight: bold; }
.role-candidate { color: var(--muted); }
.warn { color: #b71c1c; font-weight: bold; }
.small { font-size: 12px; color: var(--muted); }
@page { size: A4; margin: 11mm; }
@media print {
  body { background: #fff; font-size: 10.5px; }
  nav { display: none; }
  .sheet { border: 0; margin: 0; padding: 0; max-width: none; break-after: page; }
  .sheet:last-child { break-after: auto; }
  figure img { max-height: 95mm; }
  .source figure img { max-height: 70mm; }
  table { font-size: 9.5px; }
  .hash { font-size: 8.5px; }
  h1 { font-size: 17px; } h2 { font-size: 15px; }
  .verdict { font-size: 13px; }
}
"""
DIAGRAM_WIDTH, DIAGRAM_ROW, THUMB_W, THUMB_H = 360, 100, 120, 80


def esc(value: object) -> str:
    return escape(str(value), quote=True)


def document(title: str, body: str) -> str:
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8">'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<title>{esc(title)}</title><style>{CSS}</style></head><body>\n{body}\n</body></html>\n"
    )


def verdict_sentence(case: SuspectCase) -> tuple[str, str]:
    """(css class, one sentence) for the verdict banner."""
    if case.error:
        return "verdict-error", f"Not examined: {case.error}"
    assert case.result is not None
    if case.result.verdict is None:  # the report always searches in fused mode, which gives a verdict
        return "verdict-none", "No verdict (a ranking only)."
    host = next((s for s in case.sources if s.role is Role.HOST), None)
    donors = [s for s in case.sources if s.role is Role.DONOR]
    if case.result.verdict is Verdict.COPY and host:
        return "verdict-copy", f"A copy of {host.name}: no local change found."
    if case.result.verdict is Verdict.NONE:
        return "verdict-none", "No source in the collection: no indexed photo is supported as host or donor."
    parts = []
    if host:
        parts.append(f"the background comes from {host.name} (host)")
    if donors:
        names = ", ".join(d.name for d in donors)
        parts.append(f"pasted material comes from {names} (donor{'s' * (len(donors) > 1)})")
    moved = host is not None and host.match.evidence.get("moved_region")
    if donors:
        tail = ""
    elif moved:
        tail = f"; the changed region is a part of {host.name} copied and moved within it (copy-move)"
    else:
        tail = "; no donor of the changed region was found in the collection"
    head = "" if host else "no host in the collection; "
    return "verdict-sources", "Sources found: " + head + "; ".join(parts) + tail + "."


def role_meaning(s: Source) -> str:
    """One plain sentence of what a ranked photo's role means, from its evidence."""
    ev = s.match.evidence
    if s.role is Role.HOST:
        how = (
            f"once aligned it agrees with {_pct(ev.get('explained_share'))} of the suspect's pixels "
            f"({_pct(ev.get('frame_share'))} of its outer band)"
            if ev.get("aligned")
            else f"its whole image is nearly the suspect's (embedding distance {ev.get('whole_distance')})"
        )
        return f"Host: the suspect's background comes from this photo; {how}."
    if s.role is Role.DONOR:
        return (
            f"Donor: {ev.get('consistent_votes', 0)} keypoints of the part the host does not explain point to this photo "
            "and agree on one transform onto it (votes for an unrelated photo scatter); a pasted region comes from here."
        )
    return "Candidate: a near photo without consistent evidence of a role; a lead to check, not a finding."


def _pct(v: object) -> str:
    return f"{100 * float(v):.0f}%" if isinstance(v, int | float) else "?"


def _fmt(v: object) -> str:
    if v is None:
        return "not reached"
    if isinstance(v, float):
        return "not reached" if not math.isfinite(v) else f"{v:.4g}"
    return str(v)


def facts_table(case: SuspectCase) -> str:
    f = case.facts
    rows = [("file", f'<span class="path">{esc(f.path)}</span>'), ("sha256", f'<span class="hash">{esc(f.sha256 or "—")}</span>')]
    if f.bytes is not None:
        rows.append(("size", f"{f.bytes:,} bytes"))
    if f.width:
        rows.append(("pixels", f"{f.width} × {f.height} ({esc(f.mode)})"))
        rows.append(("format", esc(f.format)))
    if f.exif:
        rows += [(esc(k), esc(v)) for k, v in f.exif.items()]
    elif not f.error:
        rows.append(("EXIF", "none found"))
    body = "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
    note = '<p class="small">EXIF fields are shown as found in the file; nothing here judges them.</p>'
    return f'<table class="facts">{body}</table>{note}'


def diagram(case: SuspectCase) -> str:
    """Host and donors -> suspect, as an inline SVG over the thumbnails."""
    shown = [s for s in case.shown if s.pictures.get("thumb")]
    height = max(1, len(shown)) * DIAGRAM_ROW + 10
    suspect_box = _fitted(DIAGRAM_WIDTH - THUMB_W - 4, height / 2 - THUMB_H / 2 - 6, case.thumb_size)
    parts = [
        f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {DIAGRAM_WIDTH} {height}" role="img" '
        'aria-label="provenance: host and donors to the suspect">',
        '<defs><marker id="arrow" viewBox="0 0 10 10" refX="9" refY="5" markerWidth="6" markerHeight="6" orient="auto">'
        '<path d="M0,0 L10,5 L0,10 z" fill="#444"/></marker></defs>',
    ]
    sx, sy, sw, sh = suspect_box
    for i, s in enumerate(shown):
        x, y, w, h = _fitted(4, 5 + i * DIAGRAM_ROW, s.thumb_size)
        colour = hex_colour(s.colour or HOST_COLOUR)
        what = "background" if s.role is Role.HOST else "pasted region"
        x1, y1, x2, y2 = x + w + 4, y + h / 2, sx - 4, sy + sh * (i + 1) / (len(shown) + 1)  # arrows end apart
        parts.append(
            _thumb(s.pictures["thumb"], (x, y, w, h), colour, 3)
            + f'<text x="{x}" y="{y + h + 12}" font-size="11" fill="{colour}">{esc(s.label)}: {esc(_short(s.name))}</text>'
            + f'<line x1="{x1}" y1="{y1}" x2="{x2}" y2="{y2}" stroke="{colour}" stroke-width="2.5" marker-end="url(#arrow)"/>'
            + f'<text x="{(x1 + x2) / 2}" y="{(y1 + y2) / 2 - 4}" font-size="10" text-anchor="middle" fill="#222" '
            f'stroke="#fff" stroke-width="3" paint-order="stroke">{what}</text>'
        )
    if not shown:
        parts.append(f'<text x="6" y="{height / 2}" font-size="12" fill="#555">no source found</text>')
    parts.append(
        _thumb(case.pictures.get("thumb", ""), suspect_box, "#222", 2)
        + f'<text x="{sx}" y="{sy + sh + 12}" font-size="11" fill="#222">suspect</text></svg>'
    )
    return "".join(parts)


def _fitted(x: float, y: float, size: tuple[int, int]) -> tuple[float, float, float, float]:
    """A thumbnail of `size` scaled into the THUMB_W x THUMB_H cell at (x, y), centred: (x, y, w, h)."""
    w, h = size if size[0] and size[1] else (THUMB_W, THUMB_H)
    s = min(THUMB_W / w, THUMB_H / h)
    return x + (THUMB_W - w * s) / 2, y + (THUMB_H - h * s) / 2, w * s, h * s


def _thumb(href: str, box: tuple[float, float, float, float], colour: str, stroke: int) -> str:
    x, y, w, h = box
    return (
        f'<image href="{esc(href)}" x="{x}" y="{y}" width="{w}" height="{h}"/>'
        f'<rect x="{x}" y="{y}" width="{w}" height="{h}" fill="none" stroke="{colour}" stroke-width="{stroke}"/>'
    )


def _short(name: str, limit: int = 18) -> str:
    return name if len(name) <= limit else name[: limit - 1] + "…"


def summary_sheet(case: SuspectCase) -> str:
    css, sentence = verdict_sentence(case)
    name = os.path.basename(case.path)
    head = f'<section class="sheet" id="summary"><h1>Suspect photo: {esc(name)}</h1><p class="verdict {css}">{esc(sentence)}</p>'
    if case.error or "summary" not in case.pictures:
        return head + facts_table(case) + "</section>"
    legend = ", ".join(
        f'<span class="swatch" style="background:{hex_colour(s.colour)}"></span>'
        + esc("changed against the host" if s.role is Role.HOST else f"pasted from {s.name}")
        for s in case.shown
        if s.colour is not None and s.localized is not None and s.localized.changed_share > 0
    )
    caption = f"The suspect, outlined: {legend}." if legend else "The suspect (no changed region found)."
    return (
        head
        + '<div class="row">'
        + f'<figure><a href="{esc(case.pictures["suspect"])}"><img src="{esc(case.pictures["summary"])}" '
        'alt="the suspect with the localized regions outlined"></a>'
        + f"<figcaption>{caption} (The picture links to the suspect without outlines.)</figcaption></figure>"
        + f'<figure class="diagram">{diagram(case)}'
        + "<figcaption>Where the suspect came from, as the evidence supports.</figcaption></figure>"
        + "</div>"
        + f'<p class="leads">{esc(LEADS_NOTE)}</p><h3>The suspect file</h3>'
        + facts_table(case)
        + "</section>"
    )


def ranking_sheet(case: SuspectCase) -> str:
    rows = []
    for s in case.sources:
        same = s.unchanged_since_indexed
        state = "" if same is None or same else ' <span class="warn">file changed since indexing</span>'
        if s.current_sha256 is None:
            state = ' <span class="warn">file missing or unreadable now</span>'
        rows.append(
            f"<tr><td class='num'>{s.rank}</td><td class='role-{s.role.value}'>{s.role.value}</td>"
            f"<td class='path'>{esc(s.match.image)}{state}<br><span class='hash'>{esc(s.match.sha256 or '')}</span></td>"
            f"<td class='num'>{_fmt(s.match.distance)}</td><td class='num'>{s.match.votes}</td>"
            f"<td>{esc(role_meaning(s))}</td></tr>"
        )
    table = (
        "<table class='ranking'><tr><th>rank</th><th>role</th><th>photo, sha256 as indexed</th><th>distance</th>"
        f"<th>votes</th><th>what it means</th></tr>{''.join(rows)}</table>"
    )
    return (
        '<section class="sheet" id="ranking"><h2>Ranked photos</h2>'
        f'<p class="leads">{esc(LEADS_NOTE)}</p>{table}'
        "<p class='small'>distance: the paper's Eq. 7, the smallest squared L2 distance between an object of the suspect "
        "and one of the photo's (0 the same object, about 2 unrelated). votes: the suspect's keypoints whose nearest "
        "stored keypoints include one of the photo's.</p></section>"
    )


SEARCH_EVIDENCE = {
    "aligned": "chosen because it explains the suspect once aligned, not only by whole-image similarity",
    "explained_share": "share of the suspect's pixels that agree with this photo once aligned",
    "frame_share": "the same share over the suspect's outer band",
    "whole_distance": "distance between the two whole-image embeddings (0 same, about 2 unrelated)",
    "changed_region": "a part of the suspect differs from this photo",
    "moved_region": "that part is found again elsewhere in this photo: a part of it copied and moved",
    "residual_votes": "suspect keypoints the host does not explain that point to this photo",
    "consistent_votes": "how many of those agree on one transform onto this photo",
    "pixel_agreement": "share of the changed pixels this photo's own pixels confirm once aligned",
    "edge_agreement": "share of the edges there that lie on this photo's own edges",
    "region_distance": "Eq. 7 distance between the unexplained region and this photo's objects",
}
LOCALIZATION_EVIDENCE = {
    "alignment": "how the two were aligned (keypoint homography or similarity)",
    "inliers": "keypoint matches consistent with that transform",
    "matches": "keypoint matches passing the ratio test",
    "pixel_agreement": "similarity fits: share of the pixels near those matches that agree in colour once aligned",
    "edge_agreement": "... and share of their edges that lie on this photo's edges",
    "mirrored": "the photo appears mirrored in the suspect",
    "explained_share": "share of the suspect agreeing with the aligned photo",
    "changed_share": "share of the suspect inside the outlined region",
    "score": "mean change score (0..1) inside the region",
    "verified": "keypoints confirm the alignment",
}
FURTHER_PLACEMENTS_MEANING = "other places in the suspect where this photo's content was pasted, each aligned on its own"


def source_sheet(s: Source) -> str:
    colour = hex_colour(s.colour or HOST_COLOUR)
    title = f"{'Host' if s.role is Role.HOST else 'Donor'} ({esc(s.label)}): {esc(s.name)}"
    parts = [
        f'<section class="sheet source" id="{esc(s.label)}">'
        f'<h2><span class="swatch" style="background:{colour}"></span>{title}</h2>',
        f'<p class="meaning">{esc(role_meaning(s))}</p>',
    ]
    r = s.localized
    if r is None:
        parts.append(f'<p class="warn">Not localized: {esc(s.error or "no alignment")}.</p>')
        if s.pictures.get("original"):
            parts.append(f'<figure><img src="{esc(s.pictures["original"])}" alt="{esc(s.label)}"></figure>')
    else:
        if s.role is Role.HOST:
            captions = (
                "The suspect: where it differs from the host, tinted and outlined.",
                "The host: the area the change covers, outlined.",
            )
        else:
            captions = (
                "The suspect: the region pasted from this donor, outlined.",
                "The donor: the region it was taken from, outlined (through the alignment's transform, for each placement).",
            )
        pictures = (
            (s.pictures["suspect"], f"suspect, {s.label} region", captions[0]),
            (s.pictures["original"], f"{s.label} photo", captions[1]),
            (s.pictures["heat"], "heatmap", "Change score as a heatmap over the suspect (bright: surely changed)."),
        )
        figs = "".join(
            f'<figure><img src="{esc(src)}" alt="{esc(alt)}"><figcaption>{esc(text)}</figcaption></figure>'
            for src, alt, text in pictures
        )
        parts.append(f'<div class="row">{figs}</div>')
        if not r.verified:
            parts.append('<p class="warn">UNVERIFIED: keypoints do not confirm this alignment; read the outline as a guess.</p>')
    rows = [(k, v, SEARCH_EVIDENCE.get(k, "")) for k, v in s.match.evidence.items()]
    rows += [("distance", _fmt(s.match.distance), "Eq. 7: the closest object pair"), ("votes", s.match.votes, "keypoint votes")]
    if r is not None:
        loc = r.as_dict()
        rows += [(f"localize: {k}", loc[k], meaning) for k, meaning in LOCALIZATION_EVIDENCE.items() if loc.get(k) is not None]
        if r.further_placements:
            rows.append(("localize: further placements", len(r.further_placements), FURTHER_PLACEMENTS_MEANING))
    body = "".join(f"<tr><th>{esc(k)}</th><td class='num'>{esc(_fmt(v))}</td><td>{esc(m)}</td></tr>" for k, v, m in rows)
    parts.append(f"<h3>Evidence</h3><table class='evidence'>{body}</table>")
    parts.append(file_rows(s))
    return "".join(parts) + "</section>"


def file_rows(s: Source) -> str:
    same = s.unchanged_since_indexed
    status = {True: "unchanged since indexing", False: "CHANGED since indexing", None: "cannot be compared"}[same]
    return (
        "<h3>The file</h3><table>"
        f"<tr><th>path</th><td class='path'>{esc(s.match.image)}</td></tr>"
        f"<tr><th>sha256 as indexed</th><td class='hash'>{esc(s.match.sha256 or '—')}</td></tr>"
        f"<tr><th>sha256 now</th><td class='hash'>{esc(s.current_sha256 or 'missing or unreadable')}</td></tr>"
        f"<tr><th>status</th><td>{esc(status)}</td></tr></table>"
    )


def reproducibility_sheet(repro: Reproducibility, cases: list[SuspectCase]) -> str:
    rows = [
        ("oesir version", esc(repro.oesir_version)),
        ("model version (index)", f"<span class='path'>{esc(repro.model_version)}</span>"),
        ("index", f"<span class='path'>{esc(repro.index)}</span>"),
        ("index photos / generation", f"{repro.photos:,} photos, generation {repro.generation}"),
        ("index format / codec", f"{repro.index_format} / {esc(repro.codec)}"),
        ("command", f"<span class='path hash'>{esc(repro.command)}</span>"),
        ("working folder", f"<span class='path'>{esc(repro.working_folder)}</span>"),
        ("time (UTC)", esc(repro.utc_time)),
        ("machine", esc(repro.machine)),
        ("Python", esc(repro.python)),
    ]
    models = "".join(f"<tr><td>{esc(f)}</td><td class='hash'>{esc(d)}</td></tr>" for f, d in repro.models)
    photos = []
    for case in cases:
        photos.append(("suspect", case.path, case.facts.sha256))
        photos += [(s.role.value, s.match.image, s.current_sha256) for s in case.sources]
    shown = "".join(
        f"<tr><td>{esc(role)}</td><td class='path'>{esc(path)}<br>"
        f"<span class='hash'>{esc(digest or 'missing or unreadable')}</span></td></tr>"
        for role, path, digest in photos
    )
    return (
        '<section class="sheet" id="reproducibility"><h2>Reproducibility</h2>'
        + "<table>"
        + "".join(f"<tr><th>{k}</th><td>{v}</td></tr>" for k, v in rows)
        + "</table><h3>Model files used (sha256 checked against the manifest when loaded)</h3>"
        + f"<table>{models}</table><h3>Photos in this report (sha256 of the file as read for this report)</h3>"
        + f"<table>{shown}</table>"
        + f'<p class="leads">{esc(LEADS_NOTE)}</p></section>'
    )


def suspect_page(case: SuspectCase, repro: Reproducibility) -> str:
    """The whole page of one suspect: summary, ranking, one sheet per host/donor, reproducibility."""
    sheets = [summary_sheet(case)]
    if not case.error:
        sheets.append(ranking_sheet(case))
        sheets += [source_sheet(s) for s in case.shown]
    sheets.append(reproducibility_sheet(repro, [case]))
    nav = '<nav><a href="index.html">&larr; all suspects</a></nav>'
    return document(f"oesir report: {os.path.basename(case.path)}", nav + "\n".join(sheets))


def sheet_count(case: SuspectCase) -> int:
    """How many printed A4 pages `suspect_page` makes: one per section."""
    return 2 if case.error else 3 + len(case.shown)


def index_page(cases: list[SuspectCase], pages: list[str], repro: Reproducibility) -> str:
    rows = []
    for case, page in zip(cases, pages):
        css, sentence = verdict_sentence(case)
        thumb = case.pictures.get("thumb")
        img = f'<img src="{esc(thumb)}" alt="" style="max-width:120px;max-height:90px">' if thumb else ""
        rows.append(
            f"<tr><td>{img}</td><td class='path'><a href='{esc(page)}'>{esc(os.path.basename(case.path))}</a><br>"
            f"<span class='hash'>{esc(case.facts.sha256 or '')}</span></td><td class='{css}'>{esc(sentence)}</td></tr>"
        )
    body = (
        '<section class="sheet"><h1>oesir report</h1>'
        f"<p>{len(cases)} suspect photo{'s' * (len(cases) != 1)} searched against the index at "
        f"<span class='path'>{esc(repro.index)}</span> ({repro.photos:,} photos), {esc(repro.utc_time)}.</p>"
        f'<p class="leads">{esc(LEADS_NOTE)}</p>'
        f"<table><tr><th></th><th>suspect, sha256</th><th>verdict</th></tr>{''.join(rows)}</table></section>"
        + reproducibility_sheet(repro, cases)
    )
    return document("oesir report", body)
