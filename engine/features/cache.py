"""Video features computed once per (file identity, region, encoder): every track after the
first one over the same picture region skips decoding, CLIP and Synchformer, and so does an
engine restarted later (with MMAudio's encoders on a CPU, one 8 s region costs minutes).

One key, `region_key`: the video's resolved path, size, mtime_ns, ctime_ns, device and inode
(re-exporting it under the same name, or copying another file over it with its times kept,
misses), the region's start and end in whole
microseconds (the same DAW selection sent twice must hit, float noise must not matter), the
encoder's `encoder_id` (its weights and frame geometry), and FEATURES_VERSION (how frames are
taken from a file: features from an older way are other features).

Two layers: a size-bounded in-memory LRU, and a folder of safetensors files, one per entry,
that survives restarts (`open_feature_cache` puts it under the user's cache folder). On disk:
- an entry is written under a temporary name and renamed, so a reader (this engine or
  another one sharing the folder) never sees half a file;
- a file under the name of the entry being read that does not load, or that holds another
  key or another format, or tensors other than the ones written, values that are not finite
  or bytes other than its digest's (damaged, foreign), is removed and computed again;
- reading an entry refreshes its mtime; after each write the least recently used entries go
  until the folder holds at most `max_disk_bytes` of them;
- the folder may be one the user also keeps other files in: only the cache's own files are
  ever removed, entries (`<sha256 of the key>.safetensors` holding this cache's format, of any
  version, and that key) and their writers' temporary files (`.<entry name>.<host>-<pid>-
  <random>.part`, stepfoley.atomic) left over an hour by a killed engine; any other file is
  never opened nor removed;
- in a folder other users write to as well (a shared `--feature-cache`), an entry another
  user wrote is never read (it could hold any features: the key in its name is no secret),
  replaced, counted or removed; this engine computes and keeps its own in memory. An entry is
  read through the one descriptor whose owner was checked, never followed as a link (POSIX;
  Windows has no owner check: its default folder is the user's own);
- the disk is a convenience: a failed read is a miss and a failed write (a full or read-only
  disk) is skipped, so it never fails a generation.
"""

from __future__ import annotations

import errno
import hashlib
import json
import logging
import math
import os
import re
import shutil
import stat
import threading
import time
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Union

import torch
from safetensors import SafetensorError
from safetensors.torch import load as load_tensors, save_file

from stepfoley.atomic import can_make_file_in, temp_target, write_atomically
from stepfoley.engine.errors import InvalidInputError
from stepfoley.engine.user_dirs import default_feature_cache_dir, make_private_dir

Features = dict[str, torch.Tensor]
# What compute() may return: named tensors, or a tuple of tensors (returned as a tuple again).
Computed = Union[Features, tuple[torch.Tensor, ...]]

DEFAULT_MAX_MEMORY_BYTES = 256 * 2**20
DEFAULT_MAX_DISK_GB = 5.0  # about 6,000 regions of 8 s with MMAudio's encoders
MAX_DISK_GB = 100_000.0  # 100 TB: a bound on --feature-cache-max-gb that no disk reaches
DISK_FORMAT = "stepfoley-features-1"
_ANY_DISK_FORMAT = re.compile(r"stepfoley-features-[0-9]+")  # this cache's entries, of every version
# Raised whenever a region's features change for the same file and encoder (engine/video.py's
# choice of frames, an encoder's arithmetic): entries of an older version then miss and age out.
# 2: frames by best-effort timestamps, sound primed before 0 no longer moves the picture.
# 3: a file whose clock starts before 0 (a wrapped MPEG-TS) is decoded from its beginning.
# 4: a picture with non-square pixels (a sample aspect ratio) is centre-cropped as displayed;
#    a region whose length times the frame rate is a float's hair under a whole number (1.16 s
#    at 25 fps) reads its last frame.
# 5: a picture focus reaches a centre-cropping encoder (MMAudio's Synchformer) whole, on black.
FEATURES_VERSION = 5
OFF = "off"
log = logging.getLogger(__name__)
_ENTRY_NAME = re.compile(r"[0-9a-f]{64}\.safetensors")
_STALE_TEMP_S = 3600.0  # a temporary file this old was left by a killed engine
_UNREADABLE = (SafetensorError, OSError, ValueError, RuntimeError, KeyError)
_TUPLE_PREFIX = "item"
_HEADER_ROOM_BYTES = 2**20  # an entry's file: its tensors (at most the cap) and a header of names, shapes and key


def file_identity(path: str | Path) -> tuple[str, int, int, int, int, int]:
    """(resolved path, size, mtime_ns, ctime_ns, device, inode); raises OSError when the file
    cannot be stat'ed. Size and mtime alone took another file for this one: `cp -p`, `rsync
    -a` and tools that stamp fixed times give a replacement its predecessor's mtime, and its
    size may match; no one sets a ctime, and a replaced file is another inode."""
    path = Path(path).resolve()
    stat = path.stat()
    return (str(path), stat.st_size, stat.st_mtime_ns, stat.st_ctime_ns, stat.st_dev, stat.st_ino)


def region_key(path: str | Path, start_s: float, end_s: float, encoder_id: str) -> tuple:
    """The one cache key of a region's features (see the module's docstring)."""
    return file_identity(path) + (round(start_s * 1e6), round(end_s * 1e6), encoder_id, FEATURES_VERSION)


def _key_text(key: tuple) -> str:
    return json.dumps(key)


def _pack(computed: Computed) -> Features:
    if isinstance(computed, dict):
        items = computed.items()
    else:
        items = ((f"{_TUPLE_PREFIX}{i}", t) for i, t in enumerate(computed))
    return {name: t.detach().to("cpu").contiguous() for name, t in items}


def _unpack(features: Features) -> Computed:
    tuple_names = [f"{_TUPLE_PREFIX}{i}" for i in range(len(features))]
    if features and set(features) == set(tuple_names):
        return tuple(features[n] for n in tuple_names)
    return dict(features)  # a copy: callers must not be able to edit the cached entry


def _check_entry(features: Features, meta: dict) -> None:
    """Raises ValueError unless an entry read back holds what was written: the tensor names its
    metadata lists (an entry written before they were listed: a tuple's names, item0..itemN, or
    none of that pattern) with the shapes it lists (where it does), floating-point and finite.
    A header damaged by one byte can still parse, with another name or dtype; damaged data can
    hold NaN."""
    names = sorted(features)
    if "names" in meta:
        if meta["names"] != json.dumps(names):
            raise ValueError("its tensors are not the ones written")
    elif any(n.startswith(_TUPLE_PREFIX) for n in names) and set(names) != {f"{_TUPLE_PREFIX}{i}" for i in range(len(names))}:
        raise ValueError("its tensors are not the ones written")
    if "shapes" in meta and meta["shapes"] != _shapes_text(features):  # a file rewritten by something else
        raise ValueError("its tensors are not the shapes written")
    for t in features.values():
        if not t.is_floating_point() or not bool(torch.isfinite(t).all()):
            raise ValueError("its values are damaged")
    # a flipped bit or a zeroed block of a disk stays finite, and changed the audio unseen
    if "sha256" in meta and meta["sha256"] != _digest(features):
        raise ValueError("its values are not the ones written")


def _digest(features: Features) -> str:
    """sha256 of the tensors' bytes, in name order."""
    digest = hashlib.sha256()
    for name in sorted(features):
        digest.update(features[name].contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _shapes_text(features: Features) -> str:
    return json.dumps({name: list(features[name].shape) for name in sorted(features)})


def _nbytes(features: Features) -> int:
    return sum(t.numel() * t.element_size() for t in features.values())


def _written_by_someone_else(info: os.stat_result) -> bool:
    """Whether another user owns the file (POSIX; False where there are no owners to compare)."""
    return hasattr(os, "geteuid") and info.st_uid != os.geteuid()


_OPEN_ENTRY = os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0)


def _read_entry_file(path: Path, max_bytes: int) -> tuple[Features, dict] | None:
    """The tensors and metadata of the file at `path`, read through one descriptor (a FIFO does
    not block the open, a link is refused); None when it is not a regular file or another user
    wrote it. Raises one of _UNREADABLE when it cannot be read as an entry."""
    with os.fdopen(os.open(path, _OPEN_ENTRY), "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode) or _written_by_someone_else(info):
            return None
        if info.st_size > max_bytes:
            raise ValueError("larger than the cache may hold")
        # its header first, and only a file as long as that says is read on: a file of gigabytes
        # under an entry's name was read whole, and a job ran out of memory again at every try
        start, head, header = _entry_header(file)
        try:
            length = max((int(t["data_offsets"][1]) for name, t in header.items() if name != "__metadata__"),
                         default=0)
        except (TypeError, IndexError, OverflowError) as error:  # OverflowError: an offset of 1e400
            raise ValueError(f"no entry's header ({error})") from None
        if len(start) + len(head) + length != info.st_size:
            raise ValueError("its size is not the one its header gives")
        data = start + head + file.read(length)
    features = load_tensors(data)  # validates the header, so the metadata below parses
    return features, header.get("__metadata__") or {}


def _entry_header(file) -> tuple[bytes, bytes, dict]:
    """(its length's 8 bytes, the header's bytes, the header) of an entry's file read from its
    start. Raises ValueError where it has none (or another of _UNREADABLE)."""
    start = file.read(8)
    size = int.from_bytes(start, "little")
    if len(start) < 8 or not 0 < size <= _HEADER_ROOM_BYTES:
        raise ValueError("no entry's header")
    head = file.read(size)
    header = json.loads(head)
    if not isinstance(header, dict):
        raise ValueError("no entry's header (not a JSON object)")
    return start, head, header


def _is_own_entry(path: Path) -> bool:
    """Whether the file named like an entry really is one of this cache's: a format of this
    cache (this one or another version's, which only eviction ever removes), and the key its
    name is the hash of. A damaged entry is not (it goes when its key is next read)."""
    try:  # its header alone, through one descriptor as an entry is read: opened by name, a pipe
        # named like an entry blocked the open, holding the interpreter's lock (the whole engine froze)
        with os.fdopen(os.open(path, _OPEN_ENTRY), "rb") as file:
            if not stat.S_ISREG(os.fstat(file.fileno()).st_mode):
                return False
            meta = _entry_header(file)[2].get("__metadata__") or {}
    except _UNREADABLE:
        return False
    if not isinstance(meta, dict):
        return False
    key, kind = meta.get("key"), meta.get("format")
    return (isinstance(kind, str) and _ANY_DISK_FORMAT.fullmatch(kind) is not None and isinstance(key, str)
            and f"{hashlib.sha256(key.encode()).hexdigest()}.safetensors" == path.name)


def _remove(path: Path) -> None:
    try:
        path.unlink()
    except OSError:
        pass  # gone already (another engine), or not ours to remove: nothing to do


@dataclass
class CacheStats:
    memory_hits: int = 0
    disk_hits: int = 0
    misses: int = 0


class FeatureCache:
    """`cache_dir` None keeps entries in memory only."""

    def __init__(self, max_bytes: int = DEFAULT_MAX_MEMORY_BYTES, cache_dir: str | Path | None = None,
                 max_disk_bytes: int = int(DEFAULT_MAX_DISK_GB * 1e9)):
        self.max_bytes = max_bytes
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.max_disk_bytes = max_disk_bytes
        self.stats = CacheStats()
        self._entries: OrderedDict[tuple, Features] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get_or_compute_region(self, video: str | Path, start_s: float, end_s: float, encoder_id: str,
                              compute: Callable[[], Computed]) -> Computed:
        """The features of [start_s, end_s) of `video` by the encoder `encoder_id`, calling
        compute() only on a miss. A video that cannot be stat'ed is not cached: compute()
        raises the error that names it."""
        try:
            key = region_key(video, start_s, end_s, encoder_id)
        except OSError:
            return compute()
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                self.stats.memory_hits += 1
        if found is not None:
            self._touch(key)
            return _unpack(found)
        found = self._read_disk(key)
        if found is not None:
            self.stats.disk_hits += 1
        else:
            self.stats.misses += 1
            found = _pack(compute())
            self._write_disk(key, found)
        self._remember(key, found)
        return _unpack(found)

    def _remember(self, key: tuple, features: Features) -> None:
        size = _nbytes(features)
        with self._lock:
            if key in self._entries:
                self._bytes -= _nbytes(self._entries.pop(key))
            if size > self.max_bytes:
                return
            self._entries[key] = features
            self._bytes += size
            while self._bytes > self.max_bytes:
                _, evicted = self._entries.popitem(last=False)
                self._bytes -= _nbytes(evicted)

    # -- the folder --

    def _disk_path(self, key: tuple) -> Path | None:
        if self.cache_dir is None:
            return None
        return self.cache_dir / f"{hashlib.sha256(_key_text(key).encode()).hexdigest()}.safetensors"

    def _touch(self, key: tuple) -> None:
        """Mark an entry as just used, for the least-recently-used order on disk."""
        path = self._disk_path(key)
        if path is not None:
            try:  # a link planted under an entry's name (the name is no secret) leads nowhere
                if os.utime in os.supports_follow_symlinks:
                    os.utime(path, follow_symlinks=False)
                elif not path.is_symlink():
                    os.utime(path)
            except OSError:
                pass  # evicted meanwhile by another engine: written again on its next miss

    def _read_disk(self, key: tuple) -> Features | None:
        path = self._disk_path(key)
        if path is None:
            return None
        try:  # inside: a folder that can no longer be read (rights, a lost share) is a miss too
            read = _read_entry_file(path, self.max_disk_bytes + _HEADER_ROOM_BYTES)
            if read is None:
                return None  # a folder, a pipe, or another user's entry: never read nor removed
            features, meta = read
            if meta.get("format") != DISK_FORMAT or meta.get("key") != _key_text(key):
                raise ValueError("not this entry")
            _check_entry(features, meta)
        except FileNotFoundError:
            return None
        except _UNREADABLE as error:
            # damaged or foreign (a link under its name too): computed again and rewritten. A read
            # that failed for a moment (no descriptors left, a share's hiccup) is a miss only: a
            # good entry cost minutes of MMAudio's encoders on a CPU
            if isinstance(error, OSError) and error.errno != errno.ELOOP:
                return None
            try:
                if path.exists():  # else evicted by another engine meanwhile
                    _remove(path)
            except OSError:  # the folder cannot be read: nothing to remove
                pass
            return None
        self._touch(key)
        return features

    def _write_disk(self, key: tuple, features: Features) -> None:
        path = self._disk_path(key)
        if path is None or _nbytes(features) > self.max_disk_bytes:
            return
        metadata = {"format": DISK_FORMAT, "key": _key_text(key), "names": json.dumps(sorted(features)),
                    "shapes": _shapes_text(features), "sha256": _digest(features)}
        try:
            # made again if it went meanwhile (a cache cleaner): private, as open_feature_cache made it
            make_private_dir(path.parent, ours=False)
            if _written_by_someone_else(os.lstat(path)):
                return  # theirs stays (see the module's docstring); this one is kept in memory
        except FileNotFoundError:
            pass
        except OSError:
            return
        try:
            # replaced atomically: readers see the old file, none, or this one
            write_atomically(path, lambda temp: save_file(features, str(temp), metadata=metadata), replace=True)
        except (OSError, SafetensorError):
            return  # a full or read-only disk: the entry stays in memory only
        self._evict_disk(keep=path)

    def _evict_disk(self, keep: Path) -> None:
        """Remove the least recently used entries until the folder fits `max_disk_bytes`, and
        temporary files of entries that killed engines left; nothing else (see the module's
        docstring)."""
        entries, now_ns = [], time.time_ns()
        now = now_ns / 1e9
        try:
            scan = list(os.scandir(self.cache_dir))
        except OSError:
            return
        for entry in scan:
            try:
                info = entry.stat(follow_symlinks=False)
            except OSError:
                continue  # removed meanwhile
            if _written_by_someone_else(info):
                continue  # another user's: neither counted nor removed
            if stat.S_ISDIR(info.st_mode) and _ENTRY_NAME.fullmatch(temp_target(entry.name) or ""):
                # an entry's private temporary folder (atomic); a time far ahead is a clock set back since
                if abs(now - info.st_mtime) > _STALE_TEMP_S:
                    shutil.rmtree(entry.path, ignore_errors=True)
                continue
            if not stat.S_ISREG(info.st_mode):
                continue  # a folder, link, pipe or device named like one: never an entry, never opened
            if _ENTRY_NAME.fullmatch(entry.name):
                # last used in the future: a clock set back since; such entries stayed, the most
                # recent forever, and the live ones pushed each other out
                used = info.st_mtime_ns if info.st_mtime_ns <= now_ns else 0
                entries.append((used, info.st_size, Path(entry.path)))
            elif _ENTRY_NAME.fullmatch(temp_target(entry.name) or "") and abs(now - info.st_mtime) > _STALE_TEMP_S:
                _remove(Path(entry.path))
        if sum(size for _, size, _ in entries) <= self.max_disk_bytes:
            return
        # a file named like an entry that is not one is someone else's: left, and not counted
        own = [e for e in entries if e[2] == keep or _is_own_entry(e[2])]
        total = sum(size for _, size, _ in own)
        for _, size, path in sorted(own):
            if total <= self.max_disk_bytes:
                break
            if path != keep:
                _remove(path)
                total -= size


def open_feature_cache(folder: str | os.PathLike | None = None, max_disk_gb: float | None = None) -> FeatureCache:
    """The engine's feature cache. `folder` None: persistent, in the user's cache folder
    (engine.user_dirs.default_feature_cache_dir); "off": in memory only; else that folder (an
    empty name is refused, like an empty --weights: it is not "the current folder"). `max_disk_gb`
    (default DEFAULT_MAX_DISK_GB, at most MAX_DISK_GB) caps the folder. The folder is created and
    checked here, so a bad one is refused before any model loads; the default folder, when it
    cannot be used, leaves the features in memory only (logged)."""
    gigabytes = DEFAULT_MAX_DISK_GB if max_disk_gb is None else max_disk_gb
    if isinstance(gigabytes, bool) or not isinstance(gigabytes, (int, float)) or not (
            math.isfinite(gigabytes) and 0 < gigabytes <= MAX_DISK_GB):
        raise InvalidInputError(f"The feature cache size (--feature-cache-max-gb) must be a number of gigabytes "
                                f"above 0 and at most {MAX_DISK_GB:.0f}, got {gigabytes!r}.")
    if folder is not None and not os.fspath(folder).strip():
        raise InvalidInputError("The feature cache folder (--feature-cache) is empty. Give a folder, 'off' to keep "
                                "features in memory only, or leave the option out for the default folder.")
    if folder is not None and os.fspath(folder) == OFF:
        return FeatureCache()
    directory = Path(folder).expanduser() if folder is not None else default_feature_cache_dir()
    chosen = folder is not None or bool(os.environ.get("STEPFOLEY_CACHE_DIR"))  # else StepFoley's own
    try:
        # its entries name the user's videos; a folder the user named is made, not the path to it
        # (a mistyped team cache was made anew, parents and all, and its minutes of features
        # computed again without a word): --feature-cache DIR itself, features/ in $STEPFOLEY_CACHE_DIR
        make_private_dir(directory, ours=not chosen, parents=not chosen)
        usable = can_make_file_in(directory)
        reason = "it is not writable"
    except OSError as error:
        usable, reason = False, error.strerror or str(error)
        if isinstance(error, FileNotFoundError) and not os.path.isdir(directory.parent):
            reason = (f"the folder it would be made in, '{directory.parent}', does not exist; check the path"
                      + (" in $STEPFOLEY_CACHE_DIR" if folder is None else ""))
        elif os.path.lexists(directory) and not os.path.isdir(directory):
            reason = ("it is a link to a folder that is not there" if os.path.islink(directory)
                      else "it is a file, not a folder")
    if not usable and not chosen:
        # a cache no one asked for (the disk is a convenience): a read-only home stopped every
        # generation from starting
        log.warning("The default feature cache folder '%s' cannot be used (%s); picture features are kept in "
                    "memory only. Give --feature-cache DIR to keep them on disk.", directory, reason)
        return FeatureCache()
    if not usable:
        raise InvalidInputError(
            f"The feature cache folder '{directory}' cannot be used ({reason}). Choose another one with "
            f"--feature-cache DIR, or keep features in memory only with --feature-cache off.")
    return FeatureCache(cache_dir=directory, max_disk_bytes=int(gigabytes * 1e9))
