"""Video features computed once per (file identity, region, extractor): every track after the
first one over the same picture region skips decoding, CLIP and Synchformer.

A size-bounded in-memory LRU, plus an optional directory of safetensors files that survives
restarts. File identity is (absolute path, size, mtime_ns): re-exporting the video under the
same name changes its size or mtime and so misses the cache.
"""

from __future__ import annotations

import hashlib
import json
import os
import tempfile
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Hashable, Union

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file

Features = dict[str, torch.Tensor]
# What compute() may return: named tensors, or a tuple of tensors (returned as a tuple again).
Computed = Union[Features, tuple[torch.Tensor, ...]]


def file_identity(path: str | Path) -> tuple[str, int, int]:
    path = Path(path).resolve()
    stat = path.stat()
    return (str(path), stat.st_size, stat.st_mtime_ns)


def region_key(path: str | Path, start_s: float, end_s: float, extractor_id: str) -> tuple:
    # microseconds: the same DAW selection sent twice must hit, float noise must not matter
    return file_identity(path) + (round(start_s * 1e6), round(end_s * 1e6), extractor_id)


def key_digest(key: Hashable) -> str:
    return hashlib.sha256(json.dumps(key, default=str).encode()).hexdigest()


_TUPLE_PREFIX = "item"


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


def _nbytes(features: Features) -> int:
    return sum(t.numel() * t.element_size() for t in features.values())


@dataclass
class CacheStats:
    memory_hits: int = 0
    disk_hits: int = 0
    misses: int = 0


class FeatureCache:
    def __init__(self, max_bytes: int = 256 * 2**20, cache_dir: str | Path | None = None):
        self.max_bytes = max_bytes
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.stats = CacheStats()
        self._entries: OrderedDict[Hashable, Features] = OrderedDict()
        self._bytes = 0
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get_or_compute(self, key: Hashable, compute: Callable[[], Computed]) -> Computed:
        """Features for `key`, calling compute() only on a miss. The key must carry the file
        identity (see region_key) and must be JSON-representable for the disk cache."""
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                self.stats.memory_hits += 1
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

    def get_or_compute_region(self, path: str | Path, start_s: float, end_s: float,
                              extractor_id: str, compute: Callable[[], Computed]) -> Computed:
        return self.get_or_compute(region_key(path, start_s, end_s, extractor_id), compute)

    def _remember(self, key: Hashable, features: Features) -> None:
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

    def _disk_path(self, key: Hashable) -> Path | None:
        return None if self.cache_dir is None else self.cache_dir / f"{key_digest(key)}.safetensors"

    def _read_disk(self, key: Hashable) -> Features | None:
        path = self._disk_path(key)
        if path is None or not path.is_file():
            return None
        try:
            with safe_open(str(path), "pt") as f:
                if f.metadata().get("key") != json.dumps(key, default=str):
                    return None  # a digest collision or a foreign file
            return load_file(str(path))
        except (SafetensorError, OSError, ValueError):
            return None  # a damaged cache file is recomputed and atomically replaced

    def _write_disk(self, key: Hashable, features: Features) -> None:
        path = self._disk_path(key)
        if path is None:
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".tmp-", suffix=".safetensors", dir=path.parent)
        os.close(fd)
        try:
            save_file(features, tmp, metadata={"key": json.dumps(key, default=str)})
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
