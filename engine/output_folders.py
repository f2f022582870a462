"""The folders the engine wrote stems into lately, kept in a small state file, so that an engine
that starts after a killed one can remove the temp files it left (stepfoley.atomic.sweep_stale_parts):
the engine only learns output folders from requests.

State: $STEPFOLEY_STATE_DIR, else $XDG_STATE_HOME/stepfoley, else ~/.local/state/stepfoley;
the file `output-folders.json` lists the last MAX_FOLDERS folders, newest first. Losing it
costs nothing but a sweep: every write into a folder sweeps it too.
"""

from __future__ import annotations

import json
import os
import threading
from pathlib import Path

from stepfoley import atomic
from stepfoley.engine.user_dirs import make_private_dir

MAX_FOLDERS = 32
STATE_FILE = "output-folders.json"
_LOCK = threading.Lock()


def state_dir() -> Path:
    if os.environ.get("STEPFOLEY_STATE_DIR"):
        return Path(os.environ["STEPFOLEY_STATE_DIR"])
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(os.path.expanduser("~"), ".local", "state")
    return Path(base) / "stepfoley"


def recent() -> list[str]:
    """The remembered folders, newest first ([] when there is no readable state file)."""
    try:
        folders = json.loads((state_dir() / STATE_FILE).read_text(encoding="utf-8"))
    except (OSError, ValueError, RecursionError):  # RecursionError: arrays nested thousands deep
        return []
    if not isinstance(folders, list):
        return []
    # only what remember() writes: absolute paths a folder can have (another version's or a
    # damaged file's entries are dropped, and gone from the file at the next remember())
    return [f for f in folders if _is_folder_path(f)][:MAX_FOLDERS]


def _is_folder_path(value) -> bool:
    if not isinstance(value, str) or "\0" in value or not os.path.isabs(value):
        return False
    try:
        os.fsencode(value)  # a lone surrogate on POSIX: no file name holds it
    except UnicodeError:
        return False
    return True


def remember(folder: str | os.PathLike) -> None:
    """Put `folder` first in the list. Never raises: the list is a convenience."""
    folder = os.path.realpath(folder)  # as the kernel resolves it: a `..` after a symlink included
    with _LOCK:
        folders = [folder] + [f for f in recent() if f != folder]
        try:
            directory = state_dir()
            # the list names the user's folders; a folder the user chose keeps its rights
            make_private_dir(directory, ours=not os.environ.get("STEPFOLEY_STATE_DIR"))
            text = json.dumps(folders[:MAX_FOLDERS])
            atomic.write_text_atomically(directory / STATE_FILE, text, replace=True)
        except OSError:
            pass


def sweep() -> list[str]:
    """Remove stale temp files from every remembered folder; the paths removed."""
    return [os.path.join(folder, name) for folder in recent() for name in atomic.sweep_stale_parts(folder)]
