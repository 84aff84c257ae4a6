"""``python -m medseg.cli ...``: how the Slicer module starts its child process."""

import sys

from medseg.cli import main

if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
