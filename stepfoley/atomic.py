"""The one way StepFoley writes a file: never half, never over someone else's.

`write_atomically(path, write)` lets `write` fill a hidden temporary file in the destination
folder, flushes it to the disk, then gives it the final name (`stage_file` and
`StagedFile.publish` are its two halves, for a writer that publishes several files together):
- `replace=False`: with an exclusive hard link, so an existing file is never replaced and two
  writers racing for one name cannot clobber each other (on filesystems without hard links,
  with a rename that never replaces, or where the system has none, the name reserved with an
  exclusive create first, which a writer killed in that instant leaves behind, empty);
- `replace=True`: with os.replace, so a reader sees the old file or the new one, never half.
  On Windows the replace fails with PermissionError while a reader (a REAPER script polling a
  status file) has the target open, so it is retried for about a second.
A crash leaves nothing under the final name. The temporary name says which process on which
machine writes it (`.NAME.<host>-<pid>-<random>.part`), and the writer holds a lock on it (flock,
POSIX) until it is published or discarded, so `sweep_stale_parts` can remove what a killed
writer left without touching a live writer's file, even one whose process id means another
process here (a container's engine writing into a shared folder under the same host name). A
new file gets the rights a plain open() gives (0o666 less the user's umask: 0644 by default),
like any other program's, and a replaced file keeps its own, whatever rights `write` gave the
temporary file (safetensors, for one, writes 0600).

In a folder other users can write to, a temporary name could be swapped for a link to some
other file while it is written: `stage_stream` hands its writer the new file itself (the
descriptor its exclusive create returned), so nothing reopens it by name, and publishing checks
that the name still holds that file and never follows a link. The engine writes stems, into
the folders clients name, and every text file (status, metadata, reports: write_text_atomically)
that way; `stage_file` (by name) is for writers that need a path (safetensors, PyAV), in the
user's own folders.

Pure Python (no torch, no numpy): the bridge writes its status files with it too.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import secrets
import shutil
import socket
import stat
import threading
import time
from pathlib import Path
from typing import BinaryIO, Callable

TEMP_SUFFIX = ".part"
MAX_NAME_BYTES = 255  # what ext4, APFS and NTFS take; a temporary name is kept within it
# How long a replace is retried while Windows reports a sharing violation (readers hold the
# file for a moment only).
REPLACE_RETRY_PAUSES_S = (0.01, 0.02, 0.05, 0.1, 0.2, 0.3, 0.3)

_WINDOWS = os.name == "nt"
_HOST = hashlib.sha256(socket.gethostname().encode("utf-8", "backslashreplace")).hexdigest()[:8]
_PART_NAME = re.compile(r"\.(?P<target>.+)\.(?P<host>[0-9a-f]{8})-(?P<pid>[0-9]{1,10})-[0-9a-f]{8}\.part")
_WRITING: dict[str, int | None] = {}  # temp names this process writes now -> the descriptor holding its lock
_LOCK = threading.Lock()

try:
    import fcntl
except ImportError:  # Windows: no pid namespaces; the process id alone tells
    fcntl = None


def _writing(name: str) -> None:
    with _LOCK:
        _WRITING[name] = None


def _hold_lock(path: Path, handle: int) -> bool:
    """Keep `handle` (the new temp file or folder at `path`, open) with an exclusive flock on it
    until _done_writing: what a sweep in another pid namespace asks. False when such a sweep
    removed it between its creation and the lock (`handle` closed; the caller makes another).
    Best effort: a file system without locks keeps the process id alone (and NFS, where
    closing any descriptor of the file lets go of the lock, the process id after the write)."""
    name = path.name
    # of a file or folder just made, only a sweep removing it can hold the lock, for a moment:
    # still held after a second (a sweeper stopped mid-way), it is that sweep's to remove
    for pause in (0.01,) * 100 + (None,):
        try:
            if fcntl is None:
                raise OSError
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            break
        except BlockingIOError:
            if pause is None:
                os.close(handle)
                return False
            time.sleep(pause)
        except OSError:
            os.close(handle)
            return True
    try:
        os.lstat(path)
    except FileNotFoundError:
        os.close(handle)
        return False
    except OSError:
        pass  # something else under its name is for publishing to find (_check_still_ours)
    with _LOCK:
        if name in _WRITING:
            _WRITING[name], handle = handle, _WRITING[name]
    if handle is not None:  # done with meanwhile, or held twice
        os.close(handle)
    return True


def _done_writing(name: str) -> None:
    with _LOCK:
        handle = _WRITING.pop(name, None)
    if handle is not None:
        os.close(handle)


def nearest_existing(path: str | os.PathLike) -> Path:
    """`path` (made absolute) if anything is there, else the nearest folder above it that exists:
    where a writer that makes the missing folders would start, so the one to check for rights."""
    there = Path(os.path.abspath(path))
    while not os.path.lexists(there):
        there = there.parent
    return there


def name_too_long(path: str | os.PathLike) -> str | None:
    """Why `path`'s file cannot be made in its folder, or None: its name longer than the file
    system takes (255 bytes on most), or its folder so deep that the folder with a temporary
    name (up to MAX_NAME_BYTES) passes the longest path the system takes (4,096 bytes on Linux;
    on Windows 260 characters, MAX_PATH, unless long paths are switched on). Checked before
    work, so a long name is not found out after it."""
    folder, name = os.path.split(os.path.abspath(path))
    existing = nearest_existing(folder)
    try:
        limit = os.pathconf(existing, "PC_NAME_MAX")
    except (AttributeError, OSError, ValueError):  # no pathconf (Windows), or the folder says nothing
        limit = MAX_NAME_BYTES
    size = len(os.fsencode(name))
    if size > (limit if limit and limit > 0 else MAX_NAME_BYTES):
        return (f"the file name '{name[:40]}…' is {size} bytes long; the file system takes at most {limit}. "
                "Choose a shorter name.")
    if _WINDOWS:
        # MAX_PATH, in UTF-16 units with the final NUL, unless long paths are switched on
        path_limit, depth, unit = windows_path_limit(), _utf16_units(folder), "characters"
        temp_length = _utf16_units(name) + temp_name_bytes(name) - len(os.fsencode(name))
    else:
        try:
            path_limit = os.pathconf(existing, "PC_PATH_MAX")
        except (AttributeError, OSError, ValueError):
            return None
        depth, unit, temp_length = len(os.fsencode(folder)), "bytes", temp_name_bytes(name)
    if path_limit and 0 < path_limit <= depth + 1 + temp_length:  # the limit counts the final NUL
        return (f"its folder's path is {depth} {unit} long; with the file's name it would pass the {path_limit} "
                f"{unit} the system takes for a path. Choose a folder nearer the root.")
    return None


def _utf16_units(text: str) -> int:
    return len(text.encode("utf-16-le", "surrogatepass")) // 2


_WINDOWS_MAX_PATH = 260


def windows_path_limit() -> int | None:
    """The longest path Windows takes here, in UTF-16 units with the final NUL: MAX_PATH, or
    None where long paths are switched on (LongPathsEnabled; Python itself is long-path aware)."""
    try:
        import winreg

        with winreg.OpenKey(winreg.HKEY_LOCAL_MACHINE, r"SYSTEM\CurrentControlSet\Control\FileSystem") as key:
            if winreg.QueryValueEx(key, "LongPathsEnabled")[0] == 1:
                return None
    except (ImportError, OSError):
        pass
    return _WINDOWS_MAX_PATH


# What a by-name writer adds below the temporary name (_stage_by_name): "/file", or the writer's
# own temporary copy beside it (safetensors: "/.tmpXXXXXX").
INNER_PATH_BYTES = len("/.tmpXXXXXX")


def temp_name_bytes(name: str) -> int:
    """The length of stage_file's temporary path for `name` (".NAME.<host>-<pid>-<random>.part",
    the pid up to 10 digits, and what is written inside it), in bytes: the longest written for it."""
    return min(MAX_NAME_BYTES, len(os.fsencode(name)) + len(f"..{_HOST}-{'9' * 10}-{'0' * 8}{TEMP_SUFFIX}")) \
        + INNER_PATH_BYTES


def is_temp_name(name: str) -> bool:
    """Whether `name` is a temporary file of this module (any writer's, on any machine)."""
    return name.startswith(".") and name.endswith(TEMP_SUFFIX)


def temp_target(name: str) -> str | None:
    """The final name a temporary file of this module is written for (`.NAME.<host>-<pid>-
    <random>.part` -> NAME), or None when `name` is not one: a folder's owner can tell its own
    writers' temporary files from anyone else's."""
    match = _PART_NAME.fullmatch(name)
    return match["target"] if match else None


def write_atomically(path: str | os.PathLike, write: Callable[[Path], None], replace: bool = False) -> Path:
    """Call `write(temp)` to fill a new, empty temporary file beside `path`, then publish it
    under `path` (see the module's docstring). The folder must exist. Returns `path`.

    Raises FileExistsError when `replace` is false and `path` exists (or appears meanwhile), and
    whatever `write` or the filesystem raises; callers turn those into their own typed errors.
    The temporary file does not survive a failure (unless even removing it fails; then the next
    writer in that folder sweeps it, sweep_stale_parts)."""
    staged = stage_file(path, write)
    try:
        return staged.publish(path, replace)
    finally:
        staged.discard()


def write_text_atomically(path: str | os.PathLike, text: str, replace: bool = False) -> Path:
    """write_atomically for UTF-8 text, written through the new file's own descriptor
    (stage_stream), so a folder other users write to cannot turn it toward another file.
    Raises as write_atomically does."""
    staged = stage_stream(path, lambda file: file.write(text.encode("utf-8")))
    try:
        return staged.publish(path, replace)
    finally:
        staged.discard()


class StagedFile:
    """A finished temporary file, flushed to the disk, that has no final name yet (stage_file).

    A writer of several files that belong together stages them all before it publishes any:
    killed part way, it leaves only temporary files, which sweep_stale_parts removes, never
    some of the set under their final names."""

    def __init__(self, temp: Path, identity: tuple[int, int] | None = None, folder: Path | None = None):
        self.temp = temp
        self.identity = identity  # (st_dev, st_ino) of the file created; None: not checked
        self.folder = folder  # the private folder `temp` was written in (stage_file), or None
        # (path, (st_dev, st_ino)) of the file once published, for `withdraw`; None: not published
        self.published: tuple[Path, tuple[int, int]] | None = None

    def _check_still_ours(self, name: Path, final: Path, same_file: bool = True) -> None:
        """OSError unless `name` is a regular file (not a link) and, with `same_file`, the very
        file staged. After publishing only the first is asked: where a FAT or exFAT drive has no
        hard links the file is renamed, and Windows numbers a FAT file by its folder entry."""
        if self.identity is None:
            return
        found = os.lstat(name)
        if not stat.S_ISREG(found.st_mode) or same_file and (found.st_dev, found.st_ino) != self.identity:
            raise OSError(f"the new {final.name} was replaced by another file while it was written (is the "
                          "folder shared with another user?)")

    def publish(self, path: str | os.PathLike, replace: bool = False) -> Path:
        """Give the file `path` as its name (same folder): atomically, replacing an existing
        file only when `replace`, else raising FileExistsError and staying staged, so the
        caller may try another name. Returns `path`."""
        path = Path(path)
        self._check_still_ours(self.temp, path)
        if replace:
            try:
                replaced = os.lstat(path)
            except FileNotFoundError:
                replaced = None
            if replaced is not None and stat.S_ISREG(replaced.st_mode):  # a replaced file keeps its rights
                self._set_mode(stat.S_IMODE(replaced.st_mode) & 0o777)  # (never a setuid bit)
            _replace(self.temp, path)
        else:
            _publish_exclusively(self.temp, path)
        try:
            self._check_still_ours(path, path, same_file=False)
        except OSError:
            if not replace:  # the name just made: a link someone slipped in is not left as the result
                try:
                    os.unlink(path)
                except OSError:
                    pass
            raise
        try:
            found = os.lstat(path)
            self.published = (path, (found.st_dev, found.st_ino))
        except OSError:  # gone already: there is nothing of ours to withdraw
            pass
        return path

    def withdraw(self) -> None:
        """Remove the file `publish` named, if that name still holds that very file; never
        raises. A folder moved away, or swapped for another, while its writer went on has some
        other file under the name, perhaps a user's own of the same name, which stays."""
        if self.published is None:
            return
        path, identity = self.published
        self.published = None
        try:
            found = os.lstat(path)
            if stat.S_ISREG(found.st_mode) and (found.st_dev, found.st_ino) == identity:
                os.unlink(path)
        except OSError:
            pass

    def _set_mode(self, mode: int) -> None:
        """Give the temporary file `mode`, through its own descriptor: by name, a link put in its
        place would pass the mode to what it points to. Best effort: a file system without
        rights (FAT through FUSE, some shares) keeps what it has."""
        try:
            handle = os.open(self.temp, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0))
        except OSError:
            return  # gone or a link: publishing checks the name and says so
        try:
            found = os.fstat(handle)
            if self.identity is None or (found.st_dev, found.st_ino) == self.identity:
                if hasattr(os, "fchmod"):
                    os.fchmod(handle, mode)
                else:  # Windows: no links from other users in the way, and only the read-only bit
                    os.chmod(self.temp, mode)
        except OSError:
            pass
        finally:
            os.close(handle)

    def discard(self) -> None:
        """Remove the temporary file (and its private folder) if it was not published; never raises."""
        try:
            os.unlink(self.temp)
        except OSError:  # published (the temp name is gone), or even removing it failed: swept later
            pass
        if self.folder is not None:
            shutil.rmtree(self.folder, ignore_errors=True)  # and what a writer left in it
        _done_writing((self.folder or self.temp).name)


def stage_file(path: str | os.PathLike, write: Callable[[Path], None]) -> StagedFile:
    """Call `write(temp)` to fill a new, empty temporary file, in a private temporary folder
    named for `path` in its folder (which must exist), and flush it to the disk;
    `StagedFile.publish` names it. Until it is
    published or discarded, sweep_stale_parts leaves it alone. Raises what `write` or the
    filesystem raises, and then leaves no temporary file."""
    return _stage(Path(path), write, None)


def stage_stream(path: str | os.PathLike, write_to: Callable[[BinaryIO], None]) -> StagedFile:
    """As stage_file, but `write_to(file)` writes into the new temporary file itself (binary,
    seekable), never reopened by name; publishing checks the name still holds it."""
    return _stage(Path(path), None, write_to)


def can_make_file_in(folder: str | os.PathLike) -> bool:
    """Whether a new file can be made in `folder`, found by making one (a temporary name, so
    `sweep_stale_parts` removes it should this process die before it does). Permission bits do
    not tell: root passes them for a read-only mount or a kernel's folder (/proc, /sys)."""
    probe = Path(folder) / f".stepfoley-probe.{_HOST}-{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}"
    try:
        os.close(os.open(probe, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600))
    except OSError:
        return False
    try:
        os.unlink(probe)
    except OSError:
        pass  # made, so the folder takes files; the sweep removes what is left
    return True


def _temp_path(path: Path) -> Path:
    """A new temporary name for `path` in its folder, ".NAME.<host>-<pid>-<random>.part", NAME
    shortened to keep it within MAX_NAME_BYTES. Taken at write time, not import time: a forked
    child is another writer."""
    suffix = f".{_HOST}-{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}"
    target = path.name
    while len(os.fsencode(f".{target}{suffix}")) > MAX_NAME_BYTES:
        target = target[:-1]
    return path.parent / f".{target}{suffix}"


def _stage(path: Path, write: Callable[[Path], None] | None, write_to: Callable[[BinaryIO], None] | None,
           swept: int = 0) -> StagedFile:
    if write is not None:
        return _stage_by_name(make_temp_folder(path, private=True), write)
    staged = StagedFile(_temp_path(path))
    _writing(staged.temp.name)
    try:
        handle = os.open(staged.temp, os.O_CREAT | os.O_EXCL | os.O_RDWR | getattr(os, "O_BINARY", 0), 0o666)
        try:
            if not _hold_lock(staged.temp, os.dup(handle)):
                raise _SweptAway
            with os.fdopen(handle, "r+b", closefd=False) as file:
                write_to(file)
            os.fsync(handle)
            # taken once written: macOS numbers an empty FAT file otherwise than a full one
            written = os.fstat(handle)
            staged.identity = (written.st_dev, written.st_ino)
            return staged
        finally:
            os.close(handle)
    except _SweptAway:
        staged.discard()
        _check_sweeps(swept + 1, path.name)
        return _stage(path, None, write_to, swept + 1)  # nothing was written yet: under another name
    except BaseException:
        staged.discard()
        raise


class _SweptAway(Exception):
    """A new temp file was removed by a sweep before its writer held its lock."""


# How many times a new temp file or folder may be swept away before its writer locks it: once more fails.
MAX_SWEPT = 3


def _check_sweeps(swept: int, name: str) -> None:
    # `swept` times so far: past MAX_SWEPT, an OSError (made again under another name until then)
    if swept > MAX_SWEPT:
        raise OSError(f"the new temporary file for {name} was removed while it was made, again and again (is the "
                      "folder shared with another machine's engine?)")


def _stage_by_name(folder: Path, write: Callable[[Path], None]) -> StagedFile:
    """stage_file's writer, which can only write a file by name (safetensors' save_file), writes
    in `folder`, new and private (make_temp_folder): in a folder other users write to, one could
    put a link in its way; and what the writer leaves when killed (safetensors' own temporary
    copy, as large as the file) goes with the folder, which the sweep removes whole once its
    writer has gone (left beside the file, nothing ever removed it)."""
    staged = StagedFile(folder / "file", folder=folder)
    try:
        # the rights a plain open() gives, 0o666 less the umask (read from a created file, not
        # with os.umask, which would change it for every thread for a moment): `write` may make
        # the file anew with rights of its own (safetensors: 0600)
        handle = os.open(staged.temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY | getattr(os, "O_BINARY", 0), 0o666)
        created = stat.S_IMODE(os.fstat(handle).st_mode)
        os.close(handle)
        write(staged.temp)
        handle = os.open(staged.temp, os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0))
        try:
            written = os.fstat(handle)
            if not stat.S_ISREG(written.st_mode):
                raise OSError(f"the new {folder.name} is not a regular file")
            staged.identity = (written.st_dev, written.st_ino)
            # renamed before its data reaches the disk, a file could read back empty after a power cut
            os.fsync(handle)
        finally:
            os.close(handle)
        staged._set_mode(created)
    except BaseException:
        staged.discard()
        raise
    return staged


def _replace(temp: Path, path: Path) -> None:
    for pause in REPLACE_RETRY_PAUSES_S:
        try:
            os.replace(temp, path)
            return
        except PermissionError:
            time.sleep(pause)
    os.replace(temp, path)  # the last try: its error goes to the caller


# linkat without following where the platform has it (Windows' CreateHardLink never follows)
_LINK_NOT_FOLLOWING = {"follow_symlinks": False} if os.link in os.supports_follow_symlinks else {}


_AT_FDCWD = -100  # Linux: paths taken as they are, relative ones from the working folder
_RENAME_NOREPLACE = 1  # Linux renameat2
_RENAME_EXCL = 0x4  # macOS renamex_np


def _rename_no_replace(temp: Path, path: Path) -> bool:
    """Rename `temp` to `path` atomically, raising FileExistsError if `path` exists; False where
    the system or the file system offers no such rename (nothing is done then)."""
    if _WINDOWS:
        os.rename(temp, path)  # MoveFileEx without MOVEFILE_REPLACE_EXISTING: never replaces
        return True
    import ctypes

    try:
        libc = ctypes.CDLL(None, use_errno=True)
        source, target = os.fsencode(temp), os.fsencode(path)
        if hasattr(libc, "renameat2"):  # glibc 2.28+, musl 1.2.3+
            done = libc.renameat2(_AT_FDCWD, source, _AT_FDCWD, target, _RENAME_NOREPLACE)
        elif hasattr(libc, "renamex_np"):  # macOS 10.12+
            done = libc.renamex_np(source, target, _RENAME_EXCL)
        else:
            return False
    except OSError:  # no C library to load
        return False
    if done == 0:
        return True
    error = ctypes.get_errno()
    if error == errno.EEXIST:
        raise FileExistsError(error, os.strerror(error), str(path))
    if error in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP):  # not on this file system
        return False
    raise OSError(error, os.strerror(error), str(temp), None, str(path))


def _publish_exclusively(temp: Path, path: Path) -> None:
    """Give the finished temp file its final name, failing if that name already exists."""
    try:
        # A hard link is created atomically and never replaces an existing entry; of a link put
        # in the temporary file's place, it copies the link, never what it points to.
        os.link(temp, path, **_LINK_NOT_FOLLOWING)
    except FileExistsError:
        raise
    except OSError:
        # File systems without hard links (exFAT, FAT32, some network shares) say so in many
        # ways: EPERM or ENOTSUP on Linux, EINVAL on Windows (ERROR_INVALID_FUNCTION). Whatever
        # the reason, a rename that never replaces is as safe; where the system has none,
        # reserving the name with an exclusive create is (it never replaces a file, and fails
        # on its own if the folder itself is the problem), then the finished file moves over
        # our own placeholder, which a writer killed in between leaves behind, empty.
        if _rename_no_replace(temp, path):
            return
        placeholder = os.open(path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o644)
        os.close(placeholder)
        try:
            os.replace(temp, path)
        except BaseException:
            os.unlink(path)
            raise
        return
    os.unlink(temp)


# --- what killed writers leave ----------------------------------------------------------------

def make_temp_folder(path: str | os.PathLike, private: bool = False) -> Path:
    """A new, empty hidden folder named for `path` in its folder, as a temporary file is named:
    a writer fills it, then renames it to its final name. sweep_stale_parts leaves it alone
    until release_temp_folder, and removes it, whole, once its writer no longer runs.
    `private`: only this user may enter it (POSIX; on Windows 0o700 would give what is made in
    it a protected ACL of its own, kept when it is renamed out, and no other user of a Windows
    machine can put a link in someone else's folder)."""
    path = Path(path)
    swept = 0
    while True:
        temp = _temp_path(path)
        _writing(temp.name)
        try:
            temp.mkdir(**({"mode": 0o700} if private and not _WINDOWS else {}))
        except BaseException as error:
            _done_writing(temp.name)
            if not isinstance(error, FileExistsError):
                raise
            continue
        try:
            handle = os.open(temp, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0) | getattr(os, "O_NOFOLLOW", 0))
        except FileNotFoundError:
            handle = None
        except OSError:
            return temp  # a folder that cannot be opened (Windows): its process id alone tells
        if handle is not None and _hold_lock(temp, handle):
            return temp
        _done_writing(temp.name)  # swept away before it was locked: another name
        swept += 1
        _check_sweeps(swept, path.name)


def release_temp_folder(temp: Path) -> None:
    """The folder `temp` of make_temp_folder was renamed or removed: forget it."""
    _done_writing(temp.name)


def sweep_stale_parts(folder: str | os.PathLike) -> list[str]:
    """Remove the temp files (and make_temp_folder's folders) of writers on this machine that no
    longer run (a killed engine, whatever its process id was). Returns the names removed; never
    raises."""
    removed = []
    try:
        entries = [(e.name, e.is_dir(follow_symlinks=False)) for e in os.scandir(folder) if is_temp_name(e.name)]
    except (OSError, ValueError):  # ValueError: a name no folder can have (a NUL, a lone surrogate)
        return removed
    for name, is_folder in entries:
        match = _PART_NAME.fullmatch(name)
        if match is None or match["host"] != _HOST or not _writer_is_gone(int(match["pid"]), name):
            continue
        path = os.path.join(folder, name)
        lock = _lock_of_a_gone_writer(path, is_folder)
        if lock is False:
            continue  # its writer still holds it: a process whose id means another process here
        try:
            if is_folder:
                shutil.rmtree(path)
            else:
                os.unlink(path)
            removed.append(name)
        except OSError:
            pass
        finally:
            if lock is not None:
                os.close(lock)
    return removed


def _lock_of_a_gone_writer(path: str, is_folder: bool) -> int | bool | None:
    """The temp file or folder at `path`, open and locked by this process now (its writer
    let go); False while its writer holds it; None where that cannot be asked (no flock on this
    system or file system, or a file this user may not open): its process id alone tells."""
    if fcntl is None:
        return None
    try:
        if not stat.S_ISREG(os.lstat(path).st_mode) and not is_folder:
            return None  # never opened: a device node's open may act
        handle = os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)
                         | (getattr(os, "O_DIRECTORY", 0) if is_folder else getattr(os, "O_NONBLOCK", 0)))
    except OSError:
        return None
    try:
        fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return handle
    except BlockingIOError:
        os.close(handle)
        return False
    except OSError:
        os.close(handle)
        return None


def _writer_is_gone(pid: int, name: str) -> bool:
    if pid == os.getpid():
        with _LOCK:
            return name not in _WRITING  # an earlier process that had our id
    if _WINDOWS:
        return _windows_process_is_gone(pid)
    if os.name != "posix":
        return False  # no safe way to ask; leave it
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:
        return False  # alive, but another user's
    return False


# Windows has no signal 0: a process is asked for by its id (kernel32's OpenProcess), and one
# that has exited but whose handle someone still holds answers with its exit code.
_PROCESS_QUERY_LIMITED_INFORMATION = 0x1000
_ERROR_INVALID_PARAMETER = 87  # OpenProcess: no process has this id
_STILL_ACTIVE = 259


def _windows_process_is_gone(pid: int) -> bool:
    """Whether no process `pid` runs on this Windows machine; False where that cannot be told
    (another user's process, which Windows does not let us open, counts as running)."""
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    # a HANDLE is pointer-sized: ctypes' default int would cut it to 32 bits on 64-bit Windows
    kernel32.OpenProcess.restype = wintypes.HANDLE
    kernel32.OpenProcess.argtypes = (wintypes.DWORD, wintypes.BOOL, wintypes.DWORD)
    kernel32.GetExitCodeProcess.restype = wintypes.BOOL
    kernel32.GetExitCodeProcess.argtypes = (wintypes.HANDLE, wintypes.LPDWORD)
    kernel32.CloseHandle.argtypes = (wintypes.HANDLE,)
    handle = kernel32.OpenProcess(_PROCESS_QUERY_LIMITED_INFORMATION, False, pid)
    if not handle:
        return ctypes.get_last_error() == _ERROR_INVALID_PARAMETER
    try:
        code = wintypes.DWORD()
        # A process that chose 259 as its exit code is taken as running: the safe side.
        return bool(kernel32.GetExitCodeProcess(handle, ctypes.byref(code))) and code.value != _STILL_ACTIVE
    finally:
        kernel32.CloseHandle(handle)
