"""Where recostream keeps what it downloads and runs (data sets, broker jars, broker data)."""

from __future__ import annotations

import os
from pathlib import Path


def cache_dir() -> Path:
    """``$RECOSTREAM_CACHE``, else ``$XDG_CACHE_HOME/recostream``, else ``~/.cache/recostream``."""
    explicit = os.environ.get("RECOSTREAM_CACHE")
    if explicit:
        return Path(explicit)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.expanduser("~/.cache")
    return Path(base) / "recostream"
