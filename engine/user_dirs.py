"""Where StepFoley keeps files that belong to the user but not to any project: the cache.

Pure Python (no torch), so command-line help can show the paths.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

APP_NAME = "stepfoley"


def user_cache_dir() -> Path:
    """$STEPFOLEY_CACHE_DIR when set; else the platform's cache folder: %LOCALAPPDATA%\\stepfoley\\Cache
    on Windows, ~/Library/Caches/stepfoley on macOS, $XDG_CACHE_HOME/stepfoley (default
    ~/.cache/stepfoley) elsewhere. Not created here."""
    if os.environ.get("STEPFOLEY_CACHE_DIR"):
        return Path(os.environ["STEPFOLEY_CACHE_DIR"]).expanduser()
    home = Path.home()
    if sys.platform == "win32":
        local = os.environ.get("LOCALAPPDATA") or str(home / "AppData" / "Local")
        return Path(local) / APP_NAME / "Cache"
    if sys.platform == "darwin":
        return home / "Library" / "Caches" / APP_NAME
    return Path(os.environ.get("XDG_CACHE_HOME") or home / ".cache") / APP_NAME


def default_feature_cache_dir() -> Path:
    """Where the engine keeps picture features across runs (engine.features.cache)."""
    return user_cache_dir() / "features"
