"""DVC plots as one page that needs no scripts and no network (``augment plots``).

``dvc plots show`` writes a page that loads Vega from a CDN, so on an air-gapped workstation
every chart is blank. Here DVC still collects the plots and fills their templates (``dvc plots
show/diff --json``, the same definitions, revisions and templates), and vl-convert, which bundles
Vega-Lite, renders each chart to inline SVG; images (sample grids) are embedded as data URIs.
"""

from __future__ import annotations

import base64
import html
import json
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Any

from augment.errors import AugmentError
from augment.io.atomic import atomic_file


class PlotsError(AugmentError):
    """DVC could not collect the plots."""


def collect(
    revs: list[str], targets: list[str], options: list[str], images: Path, cwd: Path | None = None
) -> dict[str, list[dict[str, Any]]]:
    """The plots DVC would draw: plot name -> its renders (``type`` vega or image).

    Args:
        revs: revisions to compare (``dvc plots diff``); none: the workspace (``dvc plots show``).
        targets: plot files or folders (none: every plot of the project's dvc.yaml files).
        options: further ``dvc plots`` options (``-x``, ``-y``, ``--template`` ...).
        images: where DVC copies the images of each revision.
        cwd: the DVC project (None: the current directory).

    Raises:
        PlotsError: DVC failed, or found no plot.
    """
    command = "diff" if revs else "show"
    args = [sys.executable, "-m", "dvc", "plots", command, *revs]
    if targets:
        args += ["--targets", *targets] if revs else targets
    args += [*options, "--json", "-o", str(images)]
    done = subprocess.run(args, cwd=cwd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        last = (done.stderr.strip().splitlines() or ["no message"])[-1]
        raise PlotsError(f"dvc plots {command} failed: {last}")
    found: dict[str, list[dict[str, Any]]] = json.loads(done.stdout or "{}").get("data", {})
    found = {name: renders for name, renders in found.items() if renders}
    if not found:
        raise PlotsError(
            f"dvc plots {command}: no plots found ({' '.join(targets) or 'dvc.yaml plots'}"
            f"{', revisions ' + ' '.join(revs) if revs else ''}); run the pipeline first"
        )
    return found


def _svg(spec: dict[str, Any]) -> str:
    import vl_convert

    return str(vl_convert.vegalite_to_svg(spec))


def _image(url: str) -> str:
    data = base64.b64encode(Path(url).read_bytes()).decode("ascii")
    return f'<img alt="" src="data:image/png;base64,{data}">'


def render(plots: dict[str, list[dict[str, Any]]], title: str) -> str:
    """One self-contained HTML page: every chart as inline SVG, every image inline."""
    parts = []
    for name, renders in plots.items():
        for item in renders:
            revs = ", ".join(item.get("revisions", []))
            body = _svg(item["content"]) if item["type"] == "vega" else _image(item["url"])
            parts.append(
                f"<figure>{body}<figcaption>{html.escape(name)} ({html.escape(revs)})"
                "</figcaption></figure>"
            )
    return (
        "<!doctype html><html><head><meta charset='utf-8'>"
        f"<title>{html.escape(title)}</title><style>body{{font-family:sans-serif;margin:1em}}"
        "figure{display:inline-block;vertical-align:top;margin:0.5em}"
        "img{max-width:640px;image-rendering:pixelated}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{''.join(parts)}</body></html>"
    )


def offline_plots(
    revs: list[str], targets: list[str], options: list[str], out: Path, cwd: Path | None = None
) -> tuple[Path, int]:
    """Collect the plots with DVC and write them to ``out`` as one page; (page, number of plots).

    Raises:
        PlotsError: DVC failed, or found no plot.
    """
    with tempfile.TemporaryDirectory(prefix="augment-plots-") as tmp:
        plots = collect(revs, targets, options, Path(tmp), cwd)
        title = "augment plots: " + (", ".join(revs) if revs else "workspace")
        page = render(plots, title)
    with atomic_file(out) as tmp_page:
        tmp_page.write_text(page, encoding="utf-8")
    return out, sum(len(r) for r in plots.values())
