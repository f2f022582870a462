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


def make_private_dir(path: Path, ours: bool, parents: bool = True) -> None:
    """Create `path` (and its parents) readable by this user only: its files name the user's
    videos and folders. `ours`: a folder StepFoley chose (the default cache, its state), whose
    rights are also tightened if an earlier version made it readable by others; a folder the
    user chose keeps the rights it has, and so does one the user linked in at StepFoley's place
    (a team's shared cache: chmod follows the link). `parents=False`: only `path` itself is
    made (FileNotFoundError where its parent is not there). Raises OSError."""
    path.mkdir(parents=parents, exist_ok=True, mode=0o700)
    if ours and sys.platform != "win32" and not path.is_symlink():
        info = path.stat()
        if info.st_uid == os.getuid() and info.st_mode & 0o077:
            path.chmod(0o700)
