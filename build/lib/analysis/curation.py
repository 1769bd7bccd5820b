"""``uslearn curate``'s pictures: one contact sheet per cluster and a self-contained HTML page.

The page needs no network: contact sheets and thumbnails are embedded as base64 PNGs, the
styling is inline, there is no script. Links point to the CSV files beside it.
"""

from __future__ import annotations

import base64
import html
import io
from pathlib import Path

import numpy as np
from PIL import Image

from analysis.gallery import contact_sheet, save_png

COLUMNS = 6
SHOWN_RANKED = 60  # to-label images shown with a thumbnail on the page


def soft_label_text(clusters_row, classes, minimum: float = 0.05) -> str:
    """Return ``"liver 0.95 · kidney 0.81"``: the soft label's classes above ``minimum``."""
    parts = [
        (c, float(clusters_row[f"soft_{c}"]))
        for c in classes
        if float(clusters_row[f"soft_{c}"]) >= minimum
    ]
    parts.sort(key=lambda p: -p[1])
    return " · ".join(f"{c} {v:.2f}" for c, v in parts) or "no class above 0.05"


def write_sheets(curation, images, out: Path) -> dict[int, Path]:
    """Write ``sheets/cluster_<k>.png`` for every non-empty cluster; return cluster → path.

    Args:
        curation: the ``uslearn.inference.curate.Curation``.
        images: ``images[i]`` is the stored image of ``curation.images`` position i.
        out: the curate output directory.
    """
    paths = {}
    facts = curation.images
    for c, typical in curation.typical.items():
        ambiguous = curation.ambiguous[c]
        row = curation.clusters.set_index("cluster").loc[c]
        tiles, captions, blocks = [], [], []
        for label, chosen in (("most typical", typical), ("most ambiguous", ambiguous)):
            n_rows = max(1, -(-len(chosen) // COLUMNS))
            for j in range(n_rows * COLUMNS):
                if j < len(chosen):
                    i = int(chosen[j])
                    tiles.append(images[i])
                    p, second = facts["confidence"].iloc[i], int(facts["second_cluster"].iloc[i])
                    caption = f"p {p:.2f}"
                    if label == "most ambiguous":
                        caption += f", margin {facts['margin'].iloc[i]:.3f} vs c{second}"
                    captions.append(caption)
                else:
                    tiles.append(None)
                    captions.append("")
            blocks.append((label, n_rows))
        title = (
            f"cluster {c}: {int(row['size'])} images ({100 * row['share']:.1f} %), proposes "
            f"{row['proposed']}\nAlgorithm 1 soft label: {soft_label_text(row, curation.classes)}"
        )
        figure = contact_sheet(tiles, captions, COLUMNS, title, blocks)
        paths[c] = save_png(figure, out / "sheets" / f"cluster_{c:02d}.png")
    return paths


def _png_data(path_or_array) -> str:
    if isinstance(path_or_array, Path):
        raw = path_or_array.read_bytes()
    else:
        buffer = io.BytesIO()
        Image.fromarray(np.asarray(path_or_array)).save(buffer, format="PNG")
        raw = buffer.getvalue()
    return "data:image/png;base64," + base64.b64encode(raw).decode("ascii")


def _bars(row, classes) -> str:
    cells = []
    for c in classes:
        v = float(row[f"soft_{c}"])
        cells.append(
            f"<td title='{c} {v:.2f}'><div class='bar' style='width:{100 * v:.0f}%'></div>"
            f"<span>{v:.2f}</span></td>"
        )
    return "".join(cells)


def write_page(curation, sheets: dict[int, Path], images, facts: dict, out: Path) -> Path:
    """Write the self-contained ``index.html`` of a curate run; return its path.

    Args:
        curation: the ``Curation``.
        sheets: cluster → contact sheet PNG.
        images: ``images[i]`` is the stored image of ``curation.images`` position i.
        facts: model and data facts shown at the top (name → value).
        out: the curate output directory.
    """
    esc = html.escape
    classes = curation.classes
    clusters = curation.clusters[curation.clusters["size"] > 0].sort_values("size", ascending=False)
    head = "".join(f"<dt>{esc(str(k))}</dt><dd>{esc(str(v))}</dd>" for k, v in facts.items())
    rows = []
    for _, r in clusters.iterrows():
        c = int(r["cluster"])
        agreement = "–" if np.isnan(r["agreement"]) else f"{100 * r['agreement']:.0f} %"
        rows.append(
            f"<tr><td><a href='#c{c}'>cluster {c}</a></td><td>{int(r['size'])}</td>"
            f"<td>{100 * r['share']:.1f} %</td><td class='l'>{esc(r['proposed'])}</td>"
            f"{_bars(r, classes)}<td>{r['mean_confidence']:.2f}</td>"
            f"<td>{int(r['labelled'])}</td><td>{agreement}</td></tr>"
        )
    header = "".join(f"<th>{esc(c)}</th>" for c in classes)
    body = [
        "<h1>Clusters found by the model</h1>",
        f"<dl>{head}</dl>",
        "<p>Each cluster proposes the labels of its Algorithm 1 soft multi-label (the mean "
        "label of the labelled training images it received) above the model's thresholds. "
        "<em>agreement</em>: share of the cluster's labelled images here whose true label set "
        "equals the proposal.</p>",
        "<table><tr><th>cluster</th><th>images</th><th>share</th><th>proposes</th>"
        f"{header}<th>mean p</th><th>labelled</th><th>agreement</th></tr>{''.join(rows)}</table>",
        "<p>Files: <a href='proposed_labels.csv'>proposed_labels.csv</a> (every image), "
        "<a href='to_label.csv'>to_label.csv</a> (the ranking below), "
        "<a href='clusters.csv'>clusters.csv</a>, "
        "<a href='label_studio_tasks.json'>label_studio_tasks.json</a> + "
        "<a href='label_studio_config.xml'>label_studio_config.xml</a>.</p>",
    ]
    ranked = curation.ranking.head(SHOWN_RANKED)
    tiles = []
    for _, r in ranked.iterrows():
        src = _png_data(images[int(r["position"])])
        tiles.append(
            f"<figure class='t'><img src='{src}' alt='{esc(str(r['image']))}'>"
            f"<figcaption>#{int(r['rank'])} c{int(r['cluster'])} · {esc(r['why'])}<br>"
            f"{esc(str(r['image']))}<br>proposes {esc(r['proposed'] or '–')}</figcaption></figure>"
        )
    body += [
        "<h2>Label these next</h2>",
        "<p>Images without labels ranked by priority = max(percentile of uncertainty 1 − "
        "(p₁ − p₂), percentile of the distance to the nearest cluster centre), taken from the "
        "clusters in turn (largest first), each turn from an exam not yet listed when one is "
        f"left. The first {len(ranked)} of {len(curation.ranking)}:</p>",
        f"<div class='grid'>{''.join(tiles)}</div>",
        "<h2>Contact sheets</h2>",
    ]
    for _, r in clusters.iterrows():
        c = int(r["cluster"])
        body.append(
            f"<h3 id='c{c}'>cluster {c}: {int(r['size'])} images, proposes "
            f"{esc(r['proposed'])}</h3><img class='sheet' alt='cluster {c}' "
            f"src='{_png_data(sheets[c])}'>"
        )
    style = (
        "body{font-family:sans-serif;max-width:1200px;margin:1.5em auto;color:#222}"
        "table{border-collapse:collapse;font-size:12px}td,th{border:1px solid #ddd;padding:2px 5px;"
        "text-align:right}td.l{text-align:left}td div.bar{background:#8fb8de;height:6px}"
        "td span{font-size:10px;color:#555}dl{display:grid;grid-template-columns:max-content auto;"
        "gap:2px 12px}dt{font-weight:bold}.grid{display:flex;flex-wrap:wrap;gap:6px}"
        "figure.t{margin:0;width:132px;font-size:10px;overflow-wrap:anywhere}figure.t img{width:128px;height:128px;"
        "image-rendering:pixelated;border:1px solid #999}img.sheet{max-width:100%}"
    )
    page = (
        "<!DOCTYPE html><html><head><meta charset='utf-8'><title>uslearn curate</title>"
        f"<style>{style}</style></head><body>{''.join(body)}</body></html>\n"
    )
    path = out / "index.html"
    path.write_text(page, encoding="utf-8")
    return path
