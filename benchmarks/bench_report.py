#!/usr/bin/env python
"""How long a report's figures take to rasterise: the PNG path of llmsim.report.raster against the one it replaced.

    python benchmarks/bench_report.py [--run reports/sample] [--repeat 5]

Draws every figure of a run folder's report (reports/sample by default) and turns each into PNG bytes two ways,
side by side in one process so that a busy host slows both alike:
  * `png` (now): Agg's RGBA buffer, fast-octree quantised to the palette, one PNG encode;
  * the earlier path: a full-colour PNG from savefig, decoded again, median-cut quantised, saved with `optimize`.
Prints the median milliseconds per figure of each, their ratio, and the bytes each writes. Nothing is asserted on
time: the host may be shared.
"""

from __future__ import annotations

import argparse
import io
import statistics
import time
from pathlib import Path
from typing import Any

import numpy as np

from llmsim.report import build
from llmsim.report.document import Figure
from llmsim.report.raster import DPI, PALETTE, png
from llmsim.report.run import catalog_capacity, load_run


def earlier_png(fig: Any) -> bytes:
    """The PNG path before session 35 (raster.png at 9a63b05), kept here only to be measured against."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from PIL import Image

    if not isinstance(fig.canvas, FigureCanvasAgg):
        FigureCanvasAgg(fig)
    buf = io.BytesIO()
    with np.errstate(over="ignore"):
        fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
    image = Image.open(io.BytesIO(buf.getvalue())).convert("RGB")
    small = io.BytesIO()
    image.quantize(colors=PALETTE, method=Image.Quantize.MEDIANCUT, dither=Image.Dither.NONE).save(
        small, format="PNG", optimize=True)
    return small.getvalue()


def figure_drawers(run_dir: Path) -> list[Any]:
    """The drawing functions of every figure the run's report has (build.run_figures's, collected in place of
    rendering them); a figure without data (NoData) is left out."""
    from llmsim.report.figures import NoData

    drawers: list[Any] = []

    def collect(name: str, title: str, caption: str, draw: Any) -> Figure:
        try:
            draw()
        except NoData:
            return Figure(name, title, caption, skipped="no data")
        drawers.append(draw)
        return Figure(name, title, caption, skipped="collected")

    real, build.render = build.render, collect
    try:
        build.run_figures(load_run(run_dir), catalog_capacity())
    finally:
        build.render = real
    return drawers


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", type=Path, default=Path(__file__).resolve().parents[1] / "reports" / "sample")
    parser.add_argument("--repeat", type=int, default=5)
    args = parser.parse_args()
    draws = figure_drawers(args.run)
    times: dict[str, list[float]] = {"now": [], "earlier": []}
    sizes: dict[str, int] = {"now": 0, "earlier": 0}
    for _ in range(args.repeat):
        for draw in draws:
            for name, to_png in (("now", png), ("earlier", earlier_png)):
                fig, _ = draw()
                start = time.perf_counter()
                data = to_png(fig)
                times[name].append(time.perf_counter() - start)
                sizes[name] += len(data)
    now, earlier = (statistics.median(times[k]) * 1e3 for k in ("now", "earlier"))
    print(f"{len(draws)} figures of {args.run}, {args.repeat} rounds")
    print(f"now:     {now:6.1f} ms a figure, {sizes['now'] // args.repeat:,} bytes in all")
    print(f"earlier: {earlier:6.1f} ms a figure, {sizes['earlier'] // args.repeat:,} bytes in all")
    print(f"earlier / now: {earlier / now:.2f}x")


if __name__ == "__main__":
    main()
