"""Text for the HTML pages (``report.html``, ``compare.html``): escaping, numbers, links."""

from __future__ import annotations

import html
import urllib.parse
from typing import Any


def escape(value: Any) -> str:
    """``value`` as escaped HTML text (``None`` -> empty)."""
    return html.escape("" if value is None else str(value), quote=True)


def number(value: Any, fmt: str = "{:.2f}") -> str:
    """A number formatted with ``fmt`` (a dash for ``None``; other values as escaped text)."""
    if value is None:
        return "&mdash;"
    try:
        return escape(fmt.format(float(value)))
    except (TypeError, ValueError):
        return escape(value)


def href(rel: str) -> str:
    """A relative file path as an escaped, percent-encoded link target (``/`` separators)."""
    return escape(urllib.parse.quote(str(rel).replace("\\", "/"), safe="/._-~"))
