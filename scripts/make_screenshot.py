"""Make the Extensions Catalogue screenshot (``docs/screenshots/medseg-demo.png``) from the demo's output.

Runs ``medseg demo`` (the synthetic chest CT phantom through ``ct-chest``) into a temporary folder and
puts its report figures side by side: the three-plane overview with the segments and a lesion box, and
the 3D view of the smoothed models. Nothing is drawn by hand: every pixel comes from MedSeg's own output.

Usage: ``python scripts/make_screenshot.py [--out docs/screenshots/medseg-demo.png]``
"""

from __future__ import annotations

import argparse
import subprocess
import sys
import tempfile
from pathlib import Path

from PIL import Image

#: the screenshot's height in pixels (the catalogue shows it scaled down)
HEIGHT = 560
BACKGROUND = (0, 0, 0)


def compose(figures: Path, out: Path) -> None:
    """The overview figure and the 3D view, scaled to one height, side by side on black."""
    parts = [Image.open(figures / name).convert("RGB") for name in ("slices_overview.png", "view3d.png")]
    scaled = [p.resize((round(p.width * HEIGHT / p.height), HEIGHT), Image.LANCZOS) for p in parts]
    canvas = Image.new("RGB", (sum(p.width for p in scaled), HEIGHT), BACKGROUND)
    x = 0
    for p in scaled:
        canvas.paste(p, (x, 0))
        x += p.width
    out.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(out, optimize=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "docs" / "screenshots"
                    / "medseg-demo.png")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        demo = Path(tmp) / "demo"
        subprocess.run([sys.executable, "-m", "medseg.cli", "-q", "demo", "--out", str(demo)], check=True)
        compose(demo / "figures", args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
