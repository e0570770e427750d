"""Turn a drawn matplotlib figure into PNG bytes, or a figure that cannot be drawn into its reason.

Shared by the single-run report and the comparison, so both render figures the same way.
"""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import matplotlib
import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg

from llmsim.report.document import Figure
from llmsim.report.figures import NoData

# 110 dots per inch: an 8-inch figure is 880 px, inside the report's 1360 px column at its natural size, and
# the smallest label (8 pt) is 8 * 110 / 72 = 12.2 px, as large as the page's own smallest text (12 px
# table captions, html.STYLE). At 90 dpi labels of 7 pt were 8.75 px (issue 15 item 11).
DPI = 110
MIN_LABEL_PX = 12  # tests/report/test_layout.py holds every figure's text to this
PALETTE = 128  # colours of the palette PNG


def png(fig: Any) -> bytes:
    """PNG bytes of a Figure, reduced to a palette; no metadata, so the same data gives the same file.

    Charts have few colours: a 128-colour palette (no dithering) looks the same and is about a quarter of
    the size of full RGBA, which keeps report.html (every figure inline, base64) and the committed
    sample small. The figure is drawn once into Agg's RGBA buffer and quantised from there (fast octree, no
    second zlib pass): encoding a full-colour PNG, decoding it again and median-cut quantising it with
    `optimize` took 1.63x as long on the sample report's five figures (233 against 143 ms a figure), for files
    10% larger (session 35, benchmarks/bench_report.py). Pillow comes with matplotlib; should it fail, the full-colour PNG is used.
    """
    canvas = fig.canvas if isinstance(fig.canvas, FigureCanvasAgg) else FigureCanvasAgg(fig)
    # the tick locators' arithmetic overflows at axis values near the float's limit (a rate of 1e308 requests/s,
    # trial 40: matplotlib's 'overflow encountered in multiply' on stderr); the figure is drawn all the same
    with np.errstate(over="ignore"):
        try:
            from PIL import Image

            fig.set_dpi(DPI)
            canvas.draw()
            rgb = Image.fromarray(np.asarray(canvas.buffer_rgba())).convert("RGB")
            small = io.BytesIO()
            rgb.quantize(colors=PALETTE, method=Image.Quantize.FASTOCTREE, dither=Image.Dither.NONE).save(
                small, format="PNG")
            return small.getvalue()
        except Exception:  # noqa: BLE001 - the full-colour PNG is always right
            buf = io.BytesIO()
            fig.savefig(buf, format="png", dpi=DPI, metadata={"Software": None})
            return buf.getvalue()


def render(name: str, title: str, caption: str, draw: Callable[[], tuple[Any, Any]]) -> Figure:
    """Draw one figure, or record why it is absent. A figure that breaks never costs the whole report."""
    try:
        # Case, backend and hardware names are text, never TeX: a '$' in a name must not start mathtext.
        with matplotlib.rc_context({"text.parse_math": False}):
            fig, _ = draw()
            data = png(fig)
    except NoData as why:
        return Figure(name, title, caption, skipped=str(why))
    except Exception as exc:  # noqa: BLE001 - report the problem in place; the tables still carry every number
        return Figure(name, title, caption, skipped=f"could not draw it ({type(exc).__name__}: {exc})")
    return Figure(name, title, caption, png=data)
