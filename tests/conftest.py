import os
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def golden_dir() -> Path:
    """The golden fixture directory: $STEPFOLEY_GOLDEN_DIR, default ../shared/golden."""
    return Path(os.environ.get("STEPFOLEY_GOLDEN_DIR", REPO.parent / "shared" / "golden"))


def golden_files(pattern: str) -> list[Path]:
    """Every fixture matching a glob, so new fixtures of the same kind are checked too."""
    return sorted(golden_dir().glob(pattern))


@pytest.fixture(autouse=True, scope="session")
def private_cache_dir(tmp_path_factory):
    """The engine keeps picture features under the user's cache folder (engine.user_dirs);
    tests, and the engines they start as subprocesses (module fixtures too), keep theirs apart."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STEPFOLEY_CACHE_DIR", str(tmp_path_factory.mktemp("cache")))
        yield


@pytest.fixture
def golden() -> Path:
    d = golden_dir()
    if not d.is_dir():
        pytest.skip(f"golden fixtures not found at {d} (set STEPFOLEY_GOLDEN_DIR)")
    return d


@pytest.fixture(scope="session", autouse=True)
def private_state_dir(tmp_path_factory):
    """The engine remembers its output folders (engine/output_folders.py); tests keep theirs
    away from the user's, and so do the engines they start as subprocesses (session scope: set
    before any module fixture starts one)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STEPFOLEY_STATE_DIR", str(tmp_path_factory.mktemp("state")))
        yield


class Kernel32Entry:
    """A kernel32 function as ctypes exposes it: callable, its `restype` and `argtypes`
    declarable (the Windows code must declare a HANDLE's width; tests check it did)."""

    def __init__(self, function):
        self.function, self.restype, self.argtypes = function, None, None

    def __call__(self, *args):
        return self.function(*args)
