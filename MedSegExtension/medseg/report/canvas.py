"""matplotlib without pyplot, for the report's PNGs: a figure on its own Agg canvas, its PNG bytes.

No global pyplot state and no GUI backend, so figures can be drawn in any thread, inside Slicer
or on a machine without a display. Sizes are inches at ``dpi`` pixels per inch.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np

from medseg.core.errors import OutputError

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


#: zlib level of the PNGs (0-9), whose rows are stored unfiltered. The pixels are the same at every
#: level. On the report's four full-size slice figures (1350 x 520 RGBA) this took 0.075 s of CPU
#: for 1.86 MB; Pillow's encoder (what ``savefig`` uses: a filter chosen per row) at level 3
#: 0.235 s for 1.90 MB, at level 1 0.16 s for 2.0 MB: the figures' flat backgrounds, text and
#: outlines compress better unfiltered.
PNG_COMPRESS_LEVEL = 1

_PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    """One PNG chunk: length, type, data, CRC-32 of type and data."""
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def encode_png(rgba: np.ndarray, dpi: float | None = None, text: Mapping[str, str] | None = None) -> bytes:
    """PNG bytes of an 8-bit image ``(height, width, 4)`` RGBA or ``(height, width, 3)`` RGB, first
    row at the top: rows unfiltered, deflated at :data:`PNG_COMPRESS_LEVEL`; ``text`` as tEXt
    chunks (Latin-1 keys and values) and ``dpi`` (pixels per inch) as the pHYs chunk, as Pillow
    writes them.

    Raises:
        OutputError: ``rgba`` is not such an image.
    """
    a = np.asarray(rgba)
    if a.dtype != np.uint8 or a.ndim != 3 or a.shape[2] not in (3, 4) or 0 in a.shape[:2]:
        raise OutputError(f"a PNG needs a non-empty uint8 (height, width, 3 or 4) image, got {a.dtype} {a.shape}")
    height, width, channels = a.shape
    rows = np.empty((height, 1 + width * channels), dtype=np.uint8)
    rows[:, 0] = 0  # filter type of each row: none
    rows[:, 1:] = a.reshape(height, width * channels)
    colour_type = 6 if channels == 4 else 2  # RGBA, RGB
    out = [_PNG_SIGNATURE, _png_chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, colour_type, 0, 0, 0))]
    for key, value in (text or {}).items():
        out.append(_png_chunk(b"tEXt", key.encode("latin-1") + b"\0" + value.encode("latin-1")))
    if dpi is not None:
        ppm = int(dpi / 0.0254 + 0.5)  # pixels per metre
        out.append(_png_chunk(b"pHYs", struct.pack(">IIB", ppm, ppm, 1)))
    out.append(_png_chunk(b"IDAT", zlib.compress(rows.tobytes(), PNG_COMPRESS_LEVEL)))
    out.append(_png_chunk(b"IEND", b""))
    return b"".join(out)


def png_bytes(fig: Figure, facecolor: Any | None = None) -> bytes:
    """The figure as PNG bytes, on ``facecolor`` (the figure's own background by default).

    The pixels ``fig.savefig(..., format="png")`` writes at the figure's dpi (its RGBA buffer,
    drawn by savefig), with its metadata (software, dpi), encoded by :func:`encode_png`.
    """
    import matplotlib as mpl  # late: only its version string, for the PNG's Software field

    buf = io.BytesIO()
    fig.savefig(buf, format="rgba", dpi=fig.dpi, facecolor=fig.get_facecolor() if facecolor is None else facecolor)
    raw = buf.getbuffer()
    width, height = fig.canvas.get_width_height()
    if raw.nbytes != 4 * width * height:
        raise OutputError(f"the figure's buffer holds {raw.nbytes} bytes, not {width} x {height} RGBA pixels")
    rgba = np.frombuffer(raw, dtype=np.uint8).reshape(height, width, 4)
    software = f"Matplotlib version{mpl.__version__}, https://matplotlib.org/"
    return encode_png(rgba, fig.dpi, {"Software": software})


def mpl_text(text: str) -> str:
    """User text safe for matplotlib (no mathtext)."""
    return str(text).replace("$", r"\$")
