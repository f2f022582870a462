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


def _permission_overrides_dropper():
    """A function that drops, for the program a root process is about to start, the capabilities
    by which root reads and enters what its permission bits deny (CAP_DAC_OVERRIDE,
    CAP_DAC_READ_SEARCH): removed from the bounding set, they are not given to the next program
    (Linux). prctl is looked up here, in the parent: loading a library between fork and exec, with
    torch's threads in the parent, may deadlock the child."""
    import ctypes

    prctl = ctypes.CDLL(None, use_errno=True).prctl
    pr_capbset_drop, cap_dac_override, cap_dac_read_search = 24, 1, 2

    def drop() -> None:
        for capability in (cap_dac_override, cap_dac_read_search):
            if prctl(pr_capbset_drop, capability, 0, 0, 0) != 0:
                raise OSError(ctypes.get_errno(), "prctl(PR_CAPBSET_DROP) refused")

    return drop


@pytest.fixture(scope="session")
def permission_bits_apply(tmp_path_factory):
    """A subprocess `preexec_fn` (None: none needed) under which a file's permission bits apply
    as they do to a user: a file of mode 000 cannot be read. As root (the CI's user), whom they do
    not stop, the program started drops the capabilities that pass over them; where that cannot be
    had, the test is skipped. Tried first on a real file."""
    import subprocess
    import sys

    if os.name != "posix":
        pytest.skip("permission bits (chmod 000) deny nothing on this system")
    preexec = _permission_overrides_dropper() if os.geteuid() == 0 else None
    closed = tmp_path_factory.mktemp("closed") / "file"
    closed.write_bytes(b"x")
    closed.chmod(0)
    try:
        tried = subprocess.run([sys.executable, "-c", "import sys; open(sys.argv[1]).close()", str(closed)],
                               preexec_fn=preexec, capture_output=True, text=True)
    except subprocess.SubprocessError as e:  # the capabilities could not be dropped (no CAP_SETPCAP)
        pytest.skip(f"running as root, and the capabilities that pass over permission bits cannot be dropped ({e})")
    if "PermissionError" not in tried.stderr:
        pytest.skip("running as root, and a file of mode 000 stays readable with the capabilities dropped")
    return preexec
