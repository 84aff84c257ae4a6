"""matplotlib without pyplot, for the report's PNGs: a figure on its own Agg canvas, its PNG bytes.

No global pyplot state and no GUI backend, so figures can be drawn in any thread, inside Slicer
or on a machine without a display. Sizes are inches at ``dpi`` pixels per inch.
"""

from __future__ import annotations

import io
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from matplotlib.figure import Figure


def new_figure(width_in: float, height_in: float, dpi: int = 100) -> Figure:
    """An empty figure of ``width_in`` x ``height_in`` inches, drawn by Agg."""
    # matplotlib only when a figure is drawn (slow import)
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width_in, height_in), dpi=dpi)
    FigureCanvasAgg(fig)
    return fig


#: zlib level of the PNGs (0-9). The pixels are the same at every level; on the report's slice
#: figures level 3 took under half the time of the default 6 for files about 10 % larger.
PNG_COMPRESS_LEVEL = 3


def png_bytes(fig: Figure, facecolor: Any | None = None) -> bytes:
    """The figure as PNG bytes, on ``facecolor`` (the figure's own background by default)."""
    buf = io.BytesIO()
    fig.savefig(buf, format="png", facecolor=fig.get_facecolor() if facecolor is None else facecolor,
                pil_kwargs={"compress_level": PNG_COMPRESS_LEVEL})
    return buf.getvalue()


def mpl_text(text: str) -> str:
    """User text safe for matplotlib (no mathtext)."""
    return str(text).replace("$", r"\$")
