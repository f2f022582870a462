"""stepfoley.atomic, the one writer every file goes through: whatever happens, the final name
holds the old file or the complete new one, and no temporary file stays behind."""

import errno
import os

import pytest

from stepfoley import atomic


def write_text(text):
    return lambda temp: temp.write_text(text, encoding="utf-8")


def test_a_new_file_gets_the_users_rights_and_no_temp_file_stays(tmp_path):
    path = atomic.write_atomically(tmp_path / "a.json", write_text("{}"))
    assert path.read_text() == "{}" and os.listdir(tmp_path) == ["a.json"]
    umask = os.umask(0)
    os.umask(umask)
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_without_replace_an_existing_file_is_kept(tmp_path):
    (tmp_path / "a.json").write_text("theirs")
    with pytest.raises(FileExistsError):
        atomic.write_atomically(tmp_path / "a.json", write_text("ours"))
    assert (tmp_path / "a.json").read_text() == "theirs" and os.listdir(tmp_path) == ["a.json"]


def test_with_replace_the_file_is_replaced_whole(tmp_path):
    (tmp_path / "a.json").write_text("old")
    atomic.write_atomically(tmp_path / "a.json", write_text("new"), replace=True)
    assert (tmp_path / "a.json").read_text() == "new" and os.listdir(tmp_path) == ["a.json"]


@pytest.mark.parametrize("replace", [False, True])
def test_a_writer_that_fails_half_way_leaves_the_old_file_and_no_temp_file(tmp_path, replace):
    (tmp_path / "old.json").write_text("old")

    def half_then_fail(temp):
        # written by name in a private temporary folder of its own (as safetensors' save_file
        # writes, with a temporary copy of its own beside the file)
        assert atomic.is_temp_name(temp.parent.name) and temp.parent.parent == tmp_path
        assert temp.parent.stat().st_mode & 0o777 == 0o700
        temp.write_text("ha")
        (temp.parent / ".tmp8cohcu").write_text("the writer's own copy")
        raise RuntimeError("disk full")

    for name in ("old.json", "new.json"):
        with pytest.raises(RuntimeError, match="disk full"):
            atomic.write_atomically(tmp_path / name, half_then_fail, replace=replace)
    assert os.listdir(tmp_path) == ["old.json"] and (tmp_path / "old.json").read_text() == "old"


def test_the_temp_file_of_a_live_writer_is_not_swept(tmp_path):
    seen = []

    def sweep_while_writing(temp):
        temp.write_text("busy")
        seen.append(atomic.sweep_stale_parts(tmp_path))
        seen.append(os.listdir(tmp_path))

    atomic.write_atomically(tmp_path / "a.json", sweep_while_writing)
    assert seen[0] == [] and len(seen[1]) == 1 and atomic.is_temp_name(seen[1][0])


def test_a_staged_file_waits_unswept_for_its_name_and_a_taken_name_leaves_it_staged(tmp_path):
    (tmp_path / "take_001.wav").write_text("theirs")
    staged = atomic.stage_file(tmp_path / "take.wav", write_text("ours"))
    assert atomic.sweep_stale_parts(tmp_path) == [] and staged.temp.exists()
    with pytest.raises(FileExistsError):
        staged.publish(tmp_path / "take_001.wav")
    assert staged.publish(tmp_path / "take_002.wav").read_text() == "ours"
    staged.discard()
    assert sorted(os.listdir(tmp_path)) == ["take_001.wav", "take_002.wav"]
    assert (tmp_path / "take_001.wav").read_text() == "theirs"


def test_a_published_file_is_withdrawn_only_while_its_name_holds_it(tmp_path):
    """A job that failed after naming some of its stems withdrew them by name: its folder moved
    away and another put in its place, that name was a user's file of the same name."""
    folder = tmp_path / "project"
    folder.mkdir()
    staged = atomic.stage_file(folder / "rain.wav", write_text("ours"))
    staged.publish(folder / "rain_001.wav")
    folder.rename(tmp_path / "moved")
    folder.mkdir()
    (folder / "rain_001.wav").write_text("the user's own")
    staged.withdraw()
    staged.discard()
    assert (folder / "rain_001.wav").read_text() == "the user's own"
    assert (tmp_path / "moved" / "rain_001.wav").read_text() == "ours"  # not found where it was

    again = atomic.stage_file(folder / "rain.wav", write_text("ours"))
    again.publish(folder / "rain_002.wav")
    again.withdraw()
    again.withdraw()  # twice is harmless
    again.discard()
    assert sorted(os.listdir(folder)) == ["rain_001.wav"]


def test_a_discarded_staged_file_leaves_nothing_and_is_no_longer_a_live_writers(tmp_path):
    staged = atomic.stage_file(tmp_path / "a.json", write_text("{}"))
    staged.discard()
    staged.discard()  # twice is harmless
    assert os.listdir(tmp_path) == [] and staged.folder.name not in atomic._WRITING


def test_a_name_near_the_file_systems_limit_gets_a_temp_name_within_it(tmp_path):
    name = "é" * 120 + ".json"  # 245 bytes: the temp name's own 30 or so would pass 255
    path = atomic.write_atomically(tmp_path / name, write_text("{}"))
    assert os.listdir(tmp_path) == [name] and path.read_text() == "{}"
    assert atomic.name_too_long(tmp_path / name) is None
    assert "256 bytes long" in atomic.name_too_long(tmp_path / ("a" * 252 + ".wav"))


def _with_umask(umask, action):
    old = os.umask(umask)
    try:
        return action()
    finally:
        os.umask(old)


@pytest.mark.parametrize("umask", [0o022, 0o027])
def test_a_writer_that_makes_its_own_0600_file_still_gives_the_rights_of_open(tmp_path, umask):
    """safetensors writes 0600 whatever the umask: the published file gets what a plain open()
    gives (0o666 less the umask), so other users can read converted weights as before."""
    import torch
    from safetensors.torch import load_file, save_file

    path = tmp_path / "w.safetensors"
    _with_umask(umask, lambda: atomic.write_atomically(path, lambda temp: save_file({"a": torch.ones(2)}, str(temp))))
    assert path.stat().st_mode & 0o777 == 0o666 & ~umask
    assert load_file(str(path))["a"].tolist() == [1.0, 1.0] and os.listdir(tmp_path) == ["w.safetensors"]


def test_a_replaced_file_keeps_its_own_rights(tmp_path):
    path = tmp_path / "w.safetensors"
    path.write_bytes(b"old")
    os.chmod(path, 0o640)

    def remake_0600(temp):  # as safetensors does: a new file of its own
        os.unlink(temp)
        fd = os.open(temp, os.O_CREAT | os.O_EXCL | os.O_WRONLY, 0o600)
        os.write(fd, b"new")
        os.close(fd)

    _with_umask(0o022, lambda: atomic.write_atomically(path, remake_0600, replace=True))
    assert path.read_bytes() == b"new" and path.stat().st_mode & 0o777 == 0o640


def test_temp_target_names_the_file_a_temp_file_is_for(tmp_path):
    seen = []
    atomic.write_atomically(tmp_path / "a.json", lambda temp: seen.append(atomic.temp_target(temp.parent.name)))
    assert seen == ["a.json"]
    assert atomic.temp_target(".notes.part") is None and atomic.temp_target("a.json") is None


def test_nearest_existing_is_the_path_or_the_folder_a_writer_would_start_in(tmp_path):
    from stepfoley.atomic import nearest_existing
    (tmp_path / "a").mkdir()
    assert nearest_existing(tmp_path / "a") == tmp_path / "a"
    assert nearest_existing(tmp_path / "a" / "b" / "c.json") == tmp_path / "a"
    (tmp_path / "a" / "link").symlink_to(tmp_path / "gone")  # a dangling link is something there
    assert nearest_existing(tmp_path / "a" / "link") == tmp_path / "a" / "link"


def test_a_temp_folder_is_kept_while_its_writer_works_and_swept_after(tmp_path):
    from stepfoley.atomic import make_temp_folder, release_temp_folder, sweep_stale_parts

    work = make_temp_folder(tmp_path / "run")
    (work / "picture.mp4").write_bytes(b"x")
    assert work.name.startswith(".run.") and sweep_stale_parts(tmp_path) == [] and work.is_dir()
    release_temp_folder(work)  # as if its process had gone: the folder is a dead writer's
    assert sweep_stale_parts(tmp_path) == [work.name] and list(tmp_path.iterdir()) == []
    (tmp_path / ".notes.part").mkdir()  # not this module's name pattern: never touched
    assert sweep_stale_parts(tmp_path) == [] and (tmp_path / ".notes.part").is_dir()


@pytest.mark.parametrize("error", [errno.EPERM, errno.EINVAL], ids=["EPERM (Linux, exFAT)", "EINVAL (Windows, exFAT)"])
@pytest.mark.parametrize("no_replace_rename", [True, False], ids=["rename", "placeholder"])
def test_a_file_system_without_hard_links_still_gets_the_file_and_never_loses_one(tmp_path, monkeypatch, error,
                                                                                  no_replace_rename):
    """exFAT or FAT32 (drives shared between a Mac and a PC) refuse the hard link that publishes
    a file: Linux says EPERM, Windows ERROR_INVALID_FUNCTION, which Python reads as EINVAL.
    The file is published by a rename that never replaces instead, or where the system has none
    by an exclusive create, and an existing file is still kept."""
    def no_hard_links(source, target, **options):
        raise OSError(error, os.strerror(error))

    monkeypatch.setattr(atomic.os, "link", no_hard_links)
    if not no_replace_rename:
        monkeypatch.setattr(atomic, "_rename_no_replace", lambda source, target: False)
    source, target = tmp_path / "a.part", tmp_path / "a.wav"
    source.write_bytes(b"new")
    atomic._publish_exclusively(source, target)
    assert target.read_bytes() == b"new" and not source.exists()
    source.write_bytes(b"newer")
    with pytest.raises(FileExistsError):
        atomic._publish_exclusively(source, target)
    assert target.read_bytes() == b"new"


class FakeKernel32:
    """kernel32's OpenProcess, GetExitCodeProcess and CloseHandle as Microsoft documents them,
    over a table of process ids: {pid: exit code (259, STILL_ACTIVE, while running)}; an id
    missing from it has no process (ERROR_INVALID_PARAMETER); `foreign` ids belong to another
    user (ERROR_ACCESS_DENIED)."""

    def __init__(self, processes, foreign=()):
        from conftest import Kernel32Entry

        self.processes, self.foreign, self.last_error, self.open_handles = processes, set(foreign), 0, set()
        self.OpenProcess = Kernel32Entry(self._open_process)
        self.GetExitCodeProcess = Kernel32Entry(self._exit_code)
        self.CloseHandle = Kernel32Entry(self._close)

    def _open_process(self, access, inherit, pid):
        assert access == 0x1000 and inherit is False
        if pid in self.foreign:
            self.last_error = 5
            return 0
        if pid not in self.processes:
            self.last_error = 87
            return 0
        self.open_handles.add(pid + 1000)
        return pid + 1000

    def _exit_code(self, handle, code_ref):
        code_ref._obj.value = self.processes[handle - 1000]
        return 1

    def _close(self, handle):
        self.open_handles.remove(handle)
        return 1


def test_on_windows_a_dead_writers_temp_file_is_swept_and_a_live_ones_kept(tmp_path, monkeypatch):
    """Windows has no signal 0: a writer is asked for through kernel32. Its temp file goes when
    no process has its id, or the process has exited; it stays while the process runs or
    belongs to another user."""
    import ctypes

    kernel = FakeKernel32({101: 259, 102: 0}, foreign={103})
    monkeypatch.setattr(atomic, "_WINDOWS", True)
    monkeypatch.setattr(ctypes, "WinDLL", lambda name, use_last_error: kernel, raising=False)
    monkeypatch.setattr(ctypes, "get_last_error", lambda: kernel.last_error, raising=False)
    names = {pid: f".take.wav.{atomic._HOST}-{pid}-0123abcd.part" for pid in (100, 101, 102, 103)}
    for name in names.values():
        (tmp_path / name).write_bytes(b"x")
    assert sorted(atomic.sweep_stale_parts(tmp_path)) == sorted([names[100], names[102]])
    assert sorted(os.listdir(tmp_path)) == sorted([names[101], names[103]]) and kernel.open_handles == set()
    from ctypes import wintypes
    assert kernel.OpenProcess.restype is wintypes.HANDLE and kernel.CloseHandle.argtypes == (wintypes.HANDLE,)
    assert kernel.GetExitCodeProcess.argtypes == (wintypes.HANDLE, wintypes.LPDWORD)


def test_on_windows_a_path_past_max_path_is_refused_before_work(tmp_path, monkeypatch):
    """Windows takes at most 260 characters a path (MAX_PATH, the final NUL included) unless
    long paths are switched on: a folder so deep that the temp file's path would pass it is
    refused before work; one character less is taken; with long paths on, nothing is refused."""
    import sys
    import types

    monkeypatch.setattr(atomic, "_WINDOWS", True)
    monkeypatch.setitem(sys.modules, "winreg", None)  # no registry to read: MAX_PATH holds
    name = "footsteps_001.wav"
    room = 260 - 1 - 1 - atomic.temp_name_bytes(name)  # the NUL, "/" and the temp name (ASCII) leave this
    base = str(tmp_path)
    fits = base + "/" + "d" * (room - len(base) - 1)
    assert len(fits) == room
    assert atomic.name_too_long(fits + "/" + name) is None
    words = atomic.name_too_long(fits + "d/" + name)
    assert f"its folder's path is {room + 1} characters long" in words and "260 characters" in words
    # a folder of CJK letters: one UTF-16 unit each (three bytes in UTF-8), counted as Windows counts
    wide = base + "/" + "足" * (room - len(base) - 1)
    assert atomic.name_too_long(wide + "/" + name) is None

    class Key:
        def __enter__(self):
            return self

        def __exit__(self, *exc):
            return False

    registry = types.SimpleNamespace(HKEY_LOCAL_MACHINE=object(), OpenKey=lambda root, path: Key(),
                                     QueryValueEx=lambda key, value: (1, 4))  # LongPathsEnabled = 1 (a DWORD)
    monkeypatch.setitem(sys.modules, "winreg", registry)
    assert atomic.windows_path_limit() is None and atomic.name_too_long(fits + "d/" + name) is None


def test_a_failed_publish_without_hard_links_leaves_nothing_under_the_final_name(tmp_path, monkeypatch):
    """The exclusive create reserves the name with an empty placeholder; when moving the
    finished file over it fails, the placeholder goes too: an empty take.wav would be taken for
    a stem."""
    def no_hard_links(source, target, **options):
        raise OSError(errno.EPERM, "Operation not permitted")

    def no_room(source, target):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(atomic.os, "link", no_hard_links)
    monkeypatch.setattr(atomic, "_rename_no_replace", lambda source, target: False)  # a system without it
    monkeypatch.setattr(atomic.os, "replace", no_room)
    source, target = tmp_path / "a.part", tmp_path / "take.wav"
    source.write_bytes(b"finished")
    with pytest.raises(OSError, match="No space left"):
        atomic._publish_exclusively(source, target)
    assert not target.exists() and source.read_bytes() == b"finished"


def _has_a_rename_that_never_replaces(folder) -> bool:
    (folder / "a").write_bytes(b"")
    (folder / "b").write_bytes(b"")
    try:
        return atomic._rename_no_replace(folder / "a", folder / "b")
    except FileExistsError:
        return True
    finally:
        for name in ("a", "b"):
            (folder / name).unlink(missing_ok=True)


@pytest.mark.skipif(not hasattr(os, "fork"), reason="the writer is killed in a forked process")
def test_a_writer_killed_while_publishing_without_hard_links_leaves_no_empty_file(tmp_path):
    """Where the hard link is refused (exFAT), the name used to be reserved with an empty file
    first: a writer killed before the finished file moved over it left an empty take.wav, which
    REAPER cannot read and which took the take's number. Killed there now (where os.replace
    would run), nothing is under the final name, and the finished file is published whole."""
    if not _has_a_rename_that_never_replaces(tmp_path):  # an old C library: the placeholder, a known limit
        pytest.skip("this system has no rename that never replaces (glibc 2.28+, musl 1.2.3+, macOS)")
    target = tmp_path / "take.wav"
    pid = os.fork()
    if pid == 0:  # the writer
        code = 1  # an exception in the writer: said by its exit code
        try:
            def no_hard_links(source, target, **options):
                raise OSError(errno.EPERM, "Operation not permitted")

            atomic.os.link = no_hard_links
            atomic.os.replace = lambda source, target: os._exit(3)  # killed before the move
            (tmp_path / "a.part").write_bytes(b"finished")
            atomic._publish_exclusively(tmp_path / "a.part", target)
            code = 0
        finally:
            os._exit(code)
    _, status = os.waitpid(pid, 0)
    assert not target.exists() or target.read_bytes() == b"finished"
    assert os.waitstatus_to_exitcode(status) == 0 and target.read_bytes() == b"finished"


def test_a_temp_file_of_another_users_live_writer_is_kept(tmp_path, monkeypatch):
    """In a shared, group-writable folder, os.kill(pid, 0) on another user's running engine
    says EPERM: that writer is alive, and its temp file must stay."""
    import subprocess
    import sys

    gone = int(subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                              text=True).stdout)

    def another_users(pid, signal):
        raise PermissionError(1, "Operation not permitted")

    monkeypatch.setattr(atomic.os, "kill", another_users)
    name = f".take.wav.{atomic._HOST}-{gone}-0123abcd.part"
    (tmp_path / name).write_bytes(b"x")
    assert atomic.sweep_stale_parts(tmp_path) == [] and (tmp_path / name).exists()


def test_the_writability_probe_leaves_nothing_and_uses_a_name_the_sweep_knows(tmp_path, monkeypatch):
    """A probe left by a process that died between making and removing it is swept like any
    other writer's temporary file."""
    removed = []
    unlink = os.unlink
    monkeypatch.setattr(atomic.os, "unlink", lambda path: (removed.append(os.path.basename(path)), unlink(path)))
    assert atomic.can_make_file_in(tmp_path) and list(tmp_path.iterdir()) == []
    assert len(removed) == 1 and atomic.temp_target(removed[0]) == "stepfoley-probe"
    assert not atomic.can_make_file_in(tmp_path / "missing")


@pytest.mark.skipif(os.name != "posix", reason="the swap needs a symbolic link made without rights")
def test_a_text_file_swapped_for_a_link_while_written_never_writes_through_it(tmp_path, monkeypatch):
    """A status or metadata file in a folder another user writes to: the temporary name turned
    into a link to another file right after it was made. Written by name, the text went into
    that file and the link was published."""
    from stepfoley.bridge.client import write_status

    victim = tmp_path / "victim.txt"
    victim.write_text("precious")
    real_open = os.open

    def open_then_swap(path, flags, *args, **kwargs):
        handle = real_open(path, flags, *args, **kwargs)
        if flags & os.O_EXCL and str(path).endswith(atomic.TEMP_SUFFIX):
            os.unlink(path)
            os.symlink(victim, path)
        return handle

    monkeypatch.setattr(atomic.os, "open", open_then_swap)
    with pytest.raises(OSError, match="replaced by another file while it was written"):
        write_status(str(tmp_path / "status.json"), {"state": "done"})
    monkeypatch.undo()
    assert victim.read_text() == "precious"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["victim.txt"]


KILLED_BY_NAME_WRITER = """
import os, signal, sys
from stepfoley import atomic
def write(temp):
    (temp.parent / ".tmpx1y2z3").write_bytes(b"x" * 4096)  # safetensors' own temporary copy, half written
    os.kill(os.getpid(), signal.SIGKILL)
atomic.write_atomically(sys.argv[1], write)
"""


def test_what_a_killed_by_name_writer_leaves_goes_with_its_folder(tmp_path):
    """safetensors' save_file writes its own hidden copy and renames it onto the name it is
    given: a writer killed part way left that copy (as large as the file) beside the target, and
    nothing ever removed it. It is now inside the write's private folder, swept whole."""
    import subprocess
    import sys

    run = subprocess.run([sys.executable, "-c", KILLED_BY_NAME_WRITER, str(tmp_path / "model.safetensors")])
    assert run.returncode == -9
    [left] = os.listdir(tmp_path)
    assert atomic.is_temp_name(left) and sorted(os.listdir(tmp_path / left)) == [".tmpx1y2z3", "file"]
    assert atomic.sweep_stale_parts(tmp_path) == [left] and os.listdir(tmp_path) == []


def test_replacing_takes_the_rights_of_a_file_only(tmp_path):
    """publish(replace=True) gave the new file the rights of whatever held the name: a link's
    target's (setuid bits included), a folder's (0777) even when the replace then failed."""
    default = atomic.write_text_atomically(tmp_path / "plain.json", "x").stat().st_mode & 0o777
    (tmp_path / "target.sh").write_text("#!/bin/sh")
    os.chmod(tmp_path / "target.sh", 0o4777)
    (tmp_path / "linked.json").symlink_to(tmp_path / "target.sh")
    assert (atomic.write_text_atomically(tmp_path / "linked.json", "y", replace=True).lstat().st_mode & 0o7777) == default
    (tmp_path / "kept.json").write_text("old")
    os.chmod(tmp_path / "kept.json", 0o600)
    assert atomic.write_text_atomically(tmp_path / "kept.json", "new", replace=True).stat().st_mode & 0o777 == 0o600
    (tmp_path / "folder.json").mkdir()
    os.chmod(tmp_path / "folder.json", 0o777)
    staged = atomic.stage_stream(tmp_path / "folder.json", lambda f: f.write(b"z"))
    try:
        with pytest.raises(OSError):
            staged.publish(tmp_path / "folder.json", replace=True)
        assert staged.temp.stat().st_mode & 0o777 == default
    finally:
        staged.discard()


WRITER_IN_ANOTHER_PID_NAMESPACE = """
import os, sys
from stepfoley import atomic
os.getpid = lambda: int(sys.argv[2])  # its id in a container's own namespace: here, no process's
staged = atomic.stage_stream(os.path.join(sys.argv[1], "take.wav"), lambda file: file.write(b"RIFF"))
folder = atomic.make_temp_folder(os.path.join(sys.argv[1], "run"))
print("staged", flush=True)
sys.stdin.read()
os._exit(0)  # killed before it publishes: both stay behind
"""


@pytest.mark.skipif(os.name != "posix", reason="flock: POSIX")
def test_a_live_writer_whose_process_id_means_no_process_here_is_not_swept(tmp_path):
    # an engine in a container with the same host name, writing into a shared folder: its
    # process id, looked up here, is no process, and the sweep removed its file mid-write
    import subprocess
    import sys

    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    writer = subprocess.Popen([sys.executable, "-c", WRITER_IN_ANOTHER_PID_NAMESPACE, str(tmp_path), str(gone.pid)],
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert writer.stdout.readline() == "staged\n"
        left = sorted(os.listdir(tmp_path))
        assert len(left) == 2 and all(f"-{gone.pid}-" in name for name in left)
        assert atomic.sweep_stale_parts(tmp_path) == [] and sorted(os.listdir(tmp_path)) == left
    finally:
        writer.communicate("")
    assert sorted(atomic.sweep_stale_parts(tmp_path)) == left and os.listdir(tmp_path) == []


def test_a_staged_file_holds_its_lock_until_it_is_published_and_discarded(tmp_path):
    fcntl = pytest.importorskip("fcntl")

    def locked(path):
        handle = os.open(path, os.O_RDONLY)
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
            return False
        except BlockingIOError:
            return True
        finally:
            os.close(handle)

    staged = atomic.stage_stream(tmp_path / "a.json", lambda file: file.write(b"{}"))
    assert locked(staged.temp)
    published = staged.publish(tmp_path / "a.json")
    staged.discard()
    assert not locked(published) and atomic._WRITING == {}


def test_a_temp_file_or_folder_swept_before_its_writer_locked_it_is_made_again(tmp_path, monkeypatch):
    # a sweep in another pid namespace can take a temp file or folder in the instant between
    # its creation and its lock: the write failed with FileNotFoundError
    real_open, real_mkdir = os.open, atomic.Path.mkdir
    swept = []

    def open_then_sweep(path, flags, *args, **kwargs):
        handle = real_open(path, flags, *args, **kwargs)
        if flags & os.O_EXCL and str(path).endswith(atomic.TEMP_SUFFIX) and not swept:
            swept.append(os.path.basename(path))
            os.unlink(path)
        return handle

    def mkdir_then_sweep(self, *args, **kwargs):
        real_mkdir(self, *args, **kwargs)
        if self.name.endswith(atomic.TEMP_SUFFIX) and len(swept) < 2:
            swept.append(self.name)
            os.rmdir(self)

    monkeypatch.setattr(atomic.os, "open", open_then_sweep)
    monkeypatch.setattr(atomic.Path, "mkdir", mkdir_then_sweep)
    assert atomic.write_text_atomically(tmp_path / "status.json", "{}").read_text() == "{}"
    folder = atomic.make_temp_folder(tmp_path / "run")
    assert folder.is_dir() and folder.name != swept[1] and len(swept) == 2
    atomic.release_temp_folder(folder)
    folder.rmdir()
    assert sorted(os.listdir(tmp_path)) == ["status.json"]
