"""engine.features.cache: the session's one feature cache, in memory and on disk.

Features of real (small) CLIP and Synchformer networks through MMAudioVideoEncoder, with their
forward calls counted by hooks; the cache itself is not mocked. Disk rules (atomic files,
damaged and foreign files, the size cap, engines sharing a folder) are checked on the files."""

import hashlib
import json
import os
import sys
from pathlib import Path
import time

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from stepfoley.engine.errors import InvalidInputError, VideoError
from stepfoley.engine.features.cache import DISK_FORMAT, FeatureCache, open_feature_cache, region_key
from stepfoley.engine.features.clip import ClipConfig, ClipModel, encode_clip_frames
from stepfoley.engine.features.mmaudio_features import MMAudioVideoEncoder, hold_last_frame
from stepfoley.engine.features.synchformer import SynchformerConfig, SynchformerVisual, encode_sync_frames
from stepfoley.engine.user_dirs import default_feature_cache_dir, user_cache_dir
from stepfoley.engine.video import read_regions
from test_video import write_video as write_timed_video

CLIP_CFG = ClipConfig(embed_dim=24, image_size=28, patch_size=14, vision_width=32, vision_layers=1,
                      vision_head_width=16, vocab_size=64, text_width=16, text_heads=2, text_layers=1)
SYNC_CFG = SynchformerConfig(embed_dim=16, depth=1, num_heads=2, image_size=32)


def write_video(path, seconds=1.2, seed=0, fps=25):
    """A 64x48 H.264 clip of random frames at a constant `fps`."""
    rng = np.random.default_rng(seed)
    pts_ms = [round(i * 1000 / fps) for i in range(round(seconds * fps))]
    return write_timed_video(path, pts_ms, image=lambda i, w, h: rng.integers(0, 256, (h, w, 3), dtype=np.uint8))


class Counted:
    """Counts forward passes of the real networks."""

    def __init__(self):
        torch.manual_seed(0)
        self.clip = ClipModel(CLIP_CFG).eval()
        self.sync = SynchformerVisual(SYNC_CFG).eval()
        with torch.no_grad():  # default init leaves projections at zero: features would be too
            for p in [*self.clip.parameters(), *self.sync.parameters()]:
                p.normal_(0.0, 0.3)
        self.calls = {"clip": 0, "sync": 0}
        self.clip.visual.register_forward_pre_hook(lambda m, i: self._count("clip"))
        self.sync.register_forward_pre_hook(lambda m, i: self._count("sync"))

    def _count(self, name):
        self.calls[name] += 1

    def encoder(self, **kw):
        return MMAudioVideoEncoder(self.clip, self.sync, clip_size=28, **kw)


def features(cache, encoder, video, start, end):
    """What StepSession._window_features does for one window."""
    return cache.get_or_compute_region(video, start, end, encoder.encoder_id,
                                       lambda: encoder.encode_region(video, start, end))


@pytest.fixture
def nets():
    return Counted()


def entries(folder):
    return sorted(p for p in folder.iterdir() if p.suffix == ".safetensors" and not p.name.startswith("."))


# --- in memory ---------------------------------------------------------------------------


def test_second_track_of_a_region_skips_both_extractors(tmp_path, nets):
    video = write_video(tmp_path / "picture.mp4")
    cache, encoder = FeatureCache(), nets.encoder()
    clip_f, sync_f = features(cache, encoder, video, 0.1, 1.06)
    assert clip_f.shape == (1, 8, 24)  # 0.96 s: 8 CLIP frames (7.68, the last held), 24 Synchformer frames = 2 windows of 8 features
    assert sync_f.shape == (1, 16, 16)
    assert nets.calls == {"clip": 1, "sync": 1}  # one batched forward each

    again = features(cache, encoder, video, 0.1 + 1e-9, 1.06)  # float noise of the same selection
    assert nets.calls == {"clip": 1, "sync": 1}
    assert torch.equal(again[0], clip_f) and torch.equal(again[1], sync_f)
    assert cache.stats.memory_hits == 1 and cache.stats.misses == 1

    features(cache, encoder, video, 0.2, 1.06)  # another region is computed
    assert nets.calls == {"clip": 2, "sync": 2}

    # the cached features are those of the uncached path
    clip_frames, sync_frames = read_regions(video, 0.1, 1.06, encoder.requests)
    torch.testing.assert_close(clip_f, encode_clip_frames(nets.clip, hold_last_frame(clip_frames, 8)))
    torch.testing.assert_close(sync_f, encode_sync_frames(nets.sync, sync_frames))


def test_a_re_exported_file_with_the_same_name_is_recomputed(tmp_path, nets):
    video = write_video(tmp_path / "picture.mp4", seed=1)
    cache, encoder = FeatureCache(), nets.encoder()
    first = features(cache, encoder, video, 0.0, 0.96)
    write_video(tmp_path / "picture.mp4", seconds=1.16, seed=2)
    second = features(cache, encoder, video, 0.0, 0.96)
    assert nets.calls == {"clip": 2, "sync": 2}
    assert not torch.equal(first[0], second[0])


def test_other_weights_do_not_share_entries(tmp_path, nets):
    video = write_video(tmp_path / "picture.mp4")
    cache = FeatureCache()
    features(cache, nets.encoder(), video, 0.0, 0.96)
    with torch.no_grad():
        nets.sync.norm.weight.mul_(2.0)  # retrained / other checkpoint -> other fingerprint
    features(cache, nets.encoder(), video, 0.0, 0.96)
    assert nets.calls == {"clip": 2, "sync": 2}
    features(cache, nets.encoder(extractor_id="explicit"), video, 0.0, 0.96)
    features(cache, nets.encoder(extractor_id="explicit"), video, 0.0, 0.96)
    assert nets.calls == {"clip": 3, "sync": 3}


def test_memory_is_bounded_least_recently_used_goes_first(tmp_path, nets):
    video = write_video(tmp_path / "picture.mp4")
    probe = FeatureCache()
    features(probe, nets.encoder(), video, 0.0, 0.96)
    cache, encoder = FeatureCache(max_bytes=2 * probe._bytes), nets.encoder()
    for start in (0.0, 0.04, 0.08):  # three regions, room for two
        features(cache, encoder, video, start, start + 0.96)
    assert len(cache) == 2 and cache._bytes <= cache.max_bytes
    before = dict(nets.calls)
    features(cache, encoder, video, 0.08, 1.04)  # newest: still cached
    assert nets.calls == before
    features(cache, encoder, video, 0.0, 0.96)  # oldest: evicted, computed again
    assert nets.calls["sync"] == before["sync"] + 1


def test_missing_video_is_a_video_error_not_a_cache_error(tmp_path, nets):
    with pytest.raises(VideoError, match="gone.mp4"):
        features(FeatureCache(cache_dir=tmp_path / "disk"), nets.encoder(), tmp_path / "gone.mp4", 0.0, 1.0)
    assert not (tmp_path / "disk").exists()


# --- on disk -------------------------------------------------------------------------------


def test_disk_cache_survives_a_restart_and_leaves_no_temp_files(tmp_path, nets):
    video = write_video(tmp_path / "picture.mp4")
    cache_dir = tmp_path / "features"
    first = features(FeatureCache(cache_dir=cache_dir), nets.encoder(), video, 0.0, 0.96)
    assert [p.name for p in cache_dir.iterdir()] == [p.name for p in entries(cache_dir)]  # no temp file
    assert len(entries(cache_dir)) == 1

    restarted = FeatureCache(cache_dir=cache_dir)  # empty memory, same folder
    again = features(restarted, nets.encoder(), video, 0.0, 0.96)
    assert nets.calls == {"clip": 1, "sync": 1} and restarted.stats.disk_hits == 1
    assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])


def fake_features(value: float):
    return lambda: (torch.full((1, 64, 8), value), torch.full((1, 192, 4), value))


def undecodable():
    raise VideoError("picture.mp4 cannot be decoded")


def test_damaged_and_foreign_files_are_removed_and_recomputed(tmp_path):
    video = tmp_path / "picture.mp4"
    video.write_bytes(b"any file has an identity")
    folder = tmp_path / "features"
    FeatureCache(cache_dir=folder).get_or_compute_region(video, 0.0, 1.0, "enc", fake_features(1.0))
    (path,) = entries(folder)
    key = region_key(video, 0.0, 1.0, "enc")
    other = {"format": DISK_FORMAT, "key": repr(region_key(video, 0.0, 2.0, "enc"))}
    good = path.read_bytes()
    # also one longer than its header says: such a file of gigabytes was read whole first
    infinite = b'{"item0":{"dtype":"F32","shape":[1],"data_offsets":[0,1e400]}}'  # an OverflowError's traceback
    for content in (b"damaged", b"", good[: len(good) // 2], good + bytes(4096), len(infinite).to_bytes(8, "little")
                    + infinite, None, other, {"key": str(key)}):
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:  # a well-formed safetensors file that is not this entry
            save_file({"item0": torch.zeros(1)}, str(path), metadata=content)
        with pytest.raises(VideoError):  # removed even when the features cannot be computed again
            FeatureCache(cache_dir=folder).get_or_compute_region(video, 0.0, 1.0, "enc", undecodable)
        assert not path.exists()
        calls = []
        result = FeatureCache(cache_dir=folder).get_or_compute_region(
            video, 0.0, 1.0, "enc", lambda: calls.append(1) or fake_features(2.0)())
        assert calls == [1] and torch.equal(result[0], torch.full((1, 64, 8), 2.0))
        assert load_file(str(path))["item0"].shape == (1, 64, 8)  # replaced by a good entry
    # a file of another name is not the cache's: never read, never removed
    (folder / "notes.txt").write_text("mine")
    FeatureCache(cache_dir=folder, max_disk_bytes=len(good)).get_or_compute_region(
        video, 0.0, 3.0, "enc", fake_features(3.0))  # room for one entry: the other one goes
    assert [p.name for p in entries(folder)] != [path.name] and len(entries(folder)) == 1
    assert (folder / "notes.txt").read_text() == "mine"


@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0,
                    reason="only root can give a file to another user (the CI runs as root)")
def test_another_users_entries_in_a_shared_folder_are_never_read_replaced_counted_or_removed(tmp_path):
    """The key in an entry's name is no secret (path, size, mtime), so another user of a shared
    folder could plant any features under it; they used to be read as this engine's."""
    video = tmp_path / "picture.mp4"
    video.write_bytes(b"any file has an identity")
    folder = tmp_path / "shared"
    FeatureCache(cache_dir=folder).get_or_compute_region(video, 0.0, 1.0, "enc", fake_features(1.0))
    (theirs,) = entries(folder)
    os.chown(theirs, 4242, 4242)
    planted = theirs.read_bytes()
    calls = []
    cache = FeatureCache(cache_dir=folder, max_disk_bytes=len(planted))
    for _ in range(2):  # computed once, then kept in memory
        result = cache.get_or_compute_region(video, 0.0, 1.0, "enc", lambda: calls.append(1) or fake_features(2.0)())
        assert torch.equal(result[0], torch.full((1, 64, 8), 2.0))
    assert calls == [1] and theirs.read_bytes() == planted and theirs.stat().st_uid == 4242
    # room for one entry: theirs is not counted against it, nor removed to make room
    cache.get_or_compute_region(video, 0.0, 2.0, "enc", fake_features(3.0))
    assert len(entries(folder)) == 2 and theirs.read_bytes() == planted


def test_an_entry_name_that_is_a_link_is_not_followed(tmp_path):
    video = tmp_path / "picture.mp4"
    video.write_bytes(b"any file has an identity")
    folder, elsewhere = tmp_path / "features", tmp_path / "elsewhere"
    FeatureCache(cache_dir=folder).get_or_compute_region(video, 0.0, 1.0, "enc", fake_features(1.0))
    (path,) = entries(folder)
    elsewhere.mkdir()
    path.rename(elsewhere / path.name)
    path.symlink_to(elsewhere / path.name)
    calls = []
    result = FeatureCache(cache_dir=folder).get_or_compute_region(
        video, 0.0, 1.0, "enc", lambda: calls.append(1) or fake_features(2.0)())
    assert calls == [1] and torch.equal(result[0], torch.full((1, 64, 8), 2.0))
    assert not path.is_symlink() and (elsewhere / path.name).is_file()  # the link replaced, its target kept


@pytest.mark.parametrize("damage", ["name", "dtype", "nan", "shape", "value"])
def test_an_entry_damaged_inside_a_header_that_still_parses_is_recomputed(tmp_path, damage):
    """One byte of a header can turn item0 into another name or float32 into int32, and damaged
    data can hold NaN: such an entry still loads, but is not what was written. An entry rewritten
    with other shapes under the same metadata (by another program, or a version that forgot to
    raise FEATURES_VERSION) used to fail every job over that region, or feed it 20 frames of 32."""
    video = tmp_path / "picture.mp4"
    video.write_bytes(b"any file has an identity")
    folder = tmp_path / "features"
    FeatureCache(cache_dir=folder).get_or_compute_region(video, 0.0, 1.0, "enc", fake_features(1.0))
    (path,) = entries(folder)
    with safe_open(str(path), "pt") as f:
        metadata, tensors = f.metadata(), {n: f.get_tensor(n) for n in f.keys()}
    if damage == "name":
        tensors["itam0"] = tensors.pop("item0")
    elif damage == "dtype":
        tensors["item0"] = tensors["item0"].to(torch.int32)
    elif damage == "nan":
        tensors["item0"][0, 0, 0] = float("nan")
    elif damage == "value":  # a flipped bit or a zeroed block stays finite: it was read as features
        tensors["item0"][0, 0, 0] = 0.0
    else:
        tensors["item0"] = tensors["item0"][:, :40]
    save_file(tensors, str(path), metadata=metadata)
    calls = []
    result = FeatureCache(cache_dir=folder).get_or_compute_region(
        video, 0.0, 1.0, "enc", lambda: calls.append(1) or fake_features(2.0)())
    assert calls == [1] and isinstance(result, tuple) and torch.equal(result[0], torch.full((1, 64, 8), 2.0))
    assert load_file(str(path))["item0"].shape == (1, 64, 8)  # replaced by a good entry


def test_a_folder_that_can_no_longer_be_read_is_a_miss(tmp_path, monkeypatch):
    # (as root nothing is unreadable: the check meets what it raises for another user)
    video = tmp_path / "picture.mp4"
    video.write_bytes(b"x")
    folder = tmp_path / "features"
    FeatureCache(cache_dir=folder).get_or_compute_region(video, 0.0, 1.0, "enc", fake_features(1.0))
    real = os.open

    def denied(path, *args, **kwargs):
        if Path(path).parent == folder:
            raise PermissionError(13, "Permission denied", str(path))
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "open", denied)
    calls = []
    FeatureCache(cache_dir=folder).get_or_compute_region(video, 0.0, 1.0, "enc",
                                                         lambda: calls.append(1) or fake_features(2.0)())
    assert calls == [1]


def test_an_entry_that_cannot_be_read_for_a_moment_is_kept(tmp_path, monkeypatch):
    """No descriptors left (or a share's hiccup) removed a good entry, minutes of MMAudio's
    encoders on a CPU to make again."""
    import errno

    video = tmp_path / "picture.mp4"
    video.write_bytes(b"x")
    folder = tmp_path / "features"
    FeatureCache(cache_dir=folder).get_or_compute_region(video, 0.0, 1.0, "enc", fake_features(1.0))
    (path,) = entries(folder)
    real = os.open

    def no_descriptors(name, *args, **kwargs):  # for its reading and for the write after the miss
        if folder in Path(name).parents:
            raise OSError(errno.EMFILE, "Too many open files", str(name))
        return real(name, *args, **kwargs)

    monkeypatch.setattr(os, "open", no_descriptors)
    FeatureCache(cache_dir=folder).get_or_compute_region(video, 0.0, 1.0, "enc", fake_features(2.0))
    monkeypatch.setattr(os, "open", real)
    assert path.exists()
    calls = []
    result = FeatureCache(cache_dir=folder).get_or_compute_region(video, 0.0, 1.0, "enc",
                                                                  lambda: calls.append(1) or fake_features(3.0)())
    assert calls == [] and torch.equal(result[0], torch.full((1, 64, 8), 1.0))


def two_entries_on_disk(tmp_path):
    """(video, folder, the entries of its 0-1 s and 1-2 s) written by a cache in tmp_path/features."""
    video = tmp_path / "picture.mp4"
    video.write_bytes(b"x")
    folder = tmp_path / "features"
    cache = FeatureCache(cache_dir=folder)
    for start in (0.0, 1.0):
        cache.get_or_compute_region(video, start, start + 1, "enc", fake_features(start))
    return video, folder, [cache._disk_path(region_key(video, s, s + 1, "enc")) for s in (0.0, 1.0)]


def test_the_size_cap_removes_the_least_recently_used_files(tmp_path):
    video, folder, (a, b) = two_entries_on_disk(tmp_path)
    size = a.stat().st_size
    os.utime(a, (1_000, 1_000))  # a is older than b ...
    os.utime(b, (2_000, 2_000))
    restarted = FeatureCache(cache_dir=folder, max_disk_bytes=int(2.5 * size))
    restarted.get_or_compute_region(video, 0.0, 1.0, "enc", fake_features(9.0))  # ... but read last
    assert restarted.stats.disk_hits == 1 and a.stat().st_mtime > 2_000
    restarted.get_or_compute_region(video, 2.0, 3.0, "enc", fake_features(2.0))  # a third: one must go
    assert a.exists() and not b.exists() and len(entries(folder)) == 2
    # an entry larger than the whole cap is not written at all
    FeatureCache(cache_dir=folder, max_disk_bytes=100).get_or_compute_region(video, 5.0, 6.0, "enc", fake_features(0))
    assert len(entries(folder)) == 2


def test_entries_used_in_the_future_go_first(tmp_path):
    """After the clock was set back, entries last used "in the future" sorted as the most recent
    for good: they stayed, and the live ones pushed each other out, computed again each time."""
    video, folder, (ahead, live) = two_entries_on_disk(tmp_path)
    year = time.time() + 365 * 86400
    os.utime(ahead, (year, year))
    restarted = FeatureCache(cache_dir=folder, max_disk_bytes=int(2.5 * live.stat().st_size))
    restarted.get_or_compute_region(video, 2.0, 3.0, "enc", fake_features(2.0))  # a third: one must go
    assert live.exists() and not ahead.exists()


def test_a_file_copied_over_the_video_with_its_times_is_another_picture(tmp_path):
    """`cp -p`, `rsync -a` or a tool that stamps fixed times give a replacement its predecessor's
    mtime, and its size may match: the old picture's features were used for the new one."""
    import shutil

    video, other = tmp_path / "picture.mp4", tmp_path / "other.mp4"
    video.write_bytes(b"the first cut")
    other.write_bytes(b"the final cut")  # the same size
    os.utime(video, (1_000, 1_000))
    os.utime(other, (1_000, 1_000))
    before = region_key(video, 0.0, 1.0, "enc")
    os.replace(tmp_path / shutil.copy2(other, tmp_path / "copy.mp4"), video)  # the same size and mtime
    assert video.stat().st_size == len(b"the first cut") and video.stat().st_mtime == 1_000
    assert region_key(video, 0.0, 1.0, "enc") != before
    assert region_key(video, 0.0, 1.0, "enc") == region_key(video, 0.0, 1.0, "enc")


def test_a_memory_hit_keeps_the_file_recently_used(tmp_path):
    video = tmp_path / "picture.mp4"
    video.write_bytes(b"x")
    cache = FeatureCache(cache_dir=tmp_path / "features")
    cache.get_or_compute_region(video, 0.0, 1.0, "enc", fake_features(1.0))
    path = cache._disk_path(region_key(video, 0.0, 1.0, "enc"))
    os.utime(path, (1_000, 1_000))
    cache.get_or_compute_region(video, 0.0, 1.0, "enc", fake_features(1.0))
    assert cache.stats.memory_hits == 1 and path.stat().st_mtime > 1_000


def test_a_memory_hit_does_not_touch_what_a_link_under_the_entry_s_name_points_to(tmp_path):
    """An entry replaced by a link after it was written (another user of a shared folder can
    plant one: the name is no secret): every memory hit used to set the link's target's time,
    any file of this user's, the video itself included (whose time is part of its key)."""
    video = tmp_path / "picture.mp4"
    video.write_bytes(b"x")
    cache = FeatureCache(cache_dir=tmp_path / "features")
    cache.get_or_compute_region(video, 0.0, 1.0, "enc", fake_features(1.0))
    path = cache._disk_path(region_key(video, 0.0, 1.0, "enc"))
    victim = tmp_path / "victim.wav"
    victim.write_bytes(b"a user's file")
    os.utime(victim, (1_000, 1_000))
    path.unlink()
    path.symlink_to(victim)
    cache.get_or_compute_region(video, 0.0, 1.0, "enc", fake_features(1.0))
    assert cache.stats.memory_hits == 1 and victim.stat().st_mtime == 1_000


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX rights")
def test_a_cache_folder_removed_while_serving_comes_back_private(tmp_path):
    """open_feature_cache makes the folder 0700 (its entries name the user's videos); removed
    by a cache cleaner while the engine runs, the next write made it again 0755."""
    video = tmp_path / "picture.mp4"
    video.write_bytes(b"x")
    folder = tmp_path / "features"
    cache = open_feature_cache(folder)
    for entry in entries(folder):
        entry.unlink()
    folder.rmdir()
    cache.get_or_compute_region(video, 0.0, 1.0, "enc", fake_features(1.0))
    assert len(entries(folder)) == 1 and folder.stat().st_mode & 0o077 == 0


def test_stale_temp_files_go_and_fresh_ones_stay(tmp_path):
    video = tmp_path / "picture.mp4"
    video.write_bytes(b"x")
    folder = tmp_path / "features"
    folder.mkdir()
    # another machine's engines share the folder: their writers' ids say nothing here, age does
    stale, fresh, stale_folder = (folder / f".{c * 64}.safetensors.0a1b2c3d-{pid}-0123abcd.part"
                                  for c, pid in (("a", 17), ("b", 18), ("c", 19)))
    for path in (stale, fresh):
        path.write_bytes(b"half")
    # an entry is written in a private folder of its own (atomic.stage_file), with the writer's copy
    stale_folder.mkdir()
    (stale_folder / ".tmp8cohcu").write_bytes(b"half")
    for old in (stale, stale_folder):
        os.utime(old, (time.time() - 2 * 3600,) * 2)
    FeatureCache(cache_dir=folder).get_or_compute_region(video, 0.0, 1.0, "enc", fake_features(1.0))
    assert not stale.exists() and fresh.exists() and not stale_folder.exists()


def test_only_the_caches_own_files_are_ever_removed(tmp_path):
    """--feature-cache may name a folder the user keeps other files in: hidden .part files, other
    programs' temporary files, even safetensors files named by a sha256 are theirs, however old
    and whatever the size cap; only the cache's entries and its writers' stale temp files go."""
    video = tmp_path / "picture.mp4"
    video.write_bytes(b"x")
    folder = tmp_path / "mine"
    folder.mkdir()
    old = time.time() - 2 * 3600
    theirs = {".notes.part": b"draft", ".report.docx.0a1b2c3d-17-0123abcd.part": b"another writer's",
              f".{'c' * 64}.part": b"hidden", "d" * 64 + ".safetensors": None, "e" * 64 + ".safetensors": b"damaged"}
    for name, content in theirs.items():
        if content is None:  # a well-formed safetensors file of someone else's, named like an entry
            save_file({"w": torch.ones(3)}, str(folder / name), metadata={"format": "not the cache's"})
        else:
            (folder / name).write_bytes(content)
    stale_own = folder / f".{'f' * 64}.safetensors.0a1b2c3d-17-0123abcd.part"
    stale_own.write_bytes(b"half an entry")
    for path in folder.iterdir():
        os.utime(path, (old, old))
    before = {name: (folder / name).read_bytes() for name in theirs}

    cache = FeatureCache(cache_dir=folder, max_disk_bytes=10_000)  # room for one entry (5 kB): the newest
    for start in (0.0, 1.0, 2.0):
        cache.get_or_compute_region(video, start, start + 1, "enc", fake_features(start))
    assert {name: (folder / name).read_bytes() for name in theirs} == before
    assert not stale_own.exists()
    own = [p for p in entries(folder) if p.name not in theirs]
    assert [p.name for p in own] == [cache._disk_path(region_key(video, 2.0, 3.0, "enc")).name]


def test_someone_elses_file_does_not_count_toward_the_caches_size(tmp_path):
    # a big safetensors file named like an entry, newer than the cache's own: before, it filled
    # the cap and every write evicted all of the cache's entries
    video = tmp_path / "picture.mp4"
    video.write_bytes(b"x")
    folder = tmp_path / "mine"
    folder.mkdir()
    cache = FeatureCache(cache_dir=folder, max_disk_bytes=30_000)
    cache.get_or_compute_region(video, 0.0, 1.0, "enc", fake_features(0.0))
    theirs = folder / ("a" * 64 + ".safetensors")
    save_file({"w": torch.ones(20_000)}, str(theirs), metadata={"format": "not the cache's"})
    cache.get_or_compute_region(video, 1.0, 2.0, "enc", fake_features(1.0))
    assert theirs.exists() and len([p for p in entries(folder) if p != theirs]) == 2


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="a named pipe")
def test_a_pipe_named_like_an_entry_is_never_opened_when_the_cache_is_over_its_cap(tmp_path):
    """Eviction opened every file named like an entry by name: a pipe blocked the open while
    holding the interpreter's lock, and the whole engine froze (no ping, SIGTERM ignored)."""
    import subprocess
    import sys

    video = tmp_path / "picture.mp4"
    video.write_bytes(b"x")
    folder = tmp_path / "features"
    folder.mkdir()
    os.mkfifo(folder / ("0" * 64 + ".safetensors"))
    script = ("import sys, torch; from stepfoley.engine.features.cache import FeatureCache\n"
              "cache = FeatureCache(cache_dir=sys.argv[1], max_disk_bytes=3000)\n"
              "for i in range(3):\n"
              "    cache.get_or_compute_region(sys.argv[2], i, i + 1, 'enc', lambda: {'x': torch.ones(500)})\n"
              "print('done')")
    done = subprocess.run([sys.executable, "-c", script, str(folder), str(video)], capture_output=True, text=True,
                          timeout=60)
    assert done.stdout.strip() == "done", done.stderr
    assert (folder / ("0" * 64 + ".safetensors")).exists()  # not the cache's: left where it is


def test_entries_of_another_version_of_the_format_count_and_go_first(tmp_path):
    # the day DISK_FORMAT changes, the old entries must not stay for good as someone else's files
    video = tmp_path / "picture.mp4"
    video.write_bytes(b"x")
    folder = tmp_path / "features"
    folder.mkdir()
    key = json.dumps(["an older version's key", 1])
    older = folder / f"{hashlib.sha256(key.encode()).hexdigest()}.safetensors"
    save_file({"item0": torch.ones(20_000)}, str(older), metadata={"format": "stepfoley-features-0", "key": key})
    os.utime(older, (1_000, 1_000))
    FeatureCache(cache_dir=folder, max_disk_bytes=30_000).get_or_compute_region(
        video, 0.0, 1.0, "enc", fake_features(1.0))
    assert not older.exists() and len(entries(folder)) == 1


def test_an_empty_folder_or_a_size_no_disk_holds_is_refused(tmp_path, monkeypatch):
    """--feature-cache "" is not the current folder (where cleanup would then run), and
    --feature-cache-max-gb 1e300 is a number no disk holds (it overflowed)."""
    monkeypatch.chdir(tmp_path)
    for folder in ("", " "):
        with pytest.raises(InvalidInputError, match="--feature-cache.*is empty.*'off'"):
            open_feature_cache(folder)
    for size in (1e300, 100_001):
        with pytest.raises(InvalidInputError, match="at most 100000"):
            open_feature_cache(tmp_path / "features", size)
    assert open_feature_cache(tmp_path / "features", 100_000).max_disk_bytes == 100_000 * 10**9
    assert sorted(os.listdir(tmp_path)) == ["features"]


def test_a_failed_write_leaves_no_entry(tmp_path, monkeypatch):
    """A writer that dies half way (disk full, killed) leaves neither a half entry under the
    final name nor its temporary file."""
    import stepfoley.engine.features.cache as cache_module

    def half_then_fail(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half a file")
        raise OSError(28, "No space left on device")

    video = tmp_path / "picture.mp4"
    video.write_bytes(b"x")
    folder = tmp_path / "features"
    monkeypatch.setattr(cache_module, "save_file", half_then_fail)
    result = FeatureCache(cache_dir=folder).get_or_compute_region(video, 0.0, 1.0, "enc", fake_features(1.0))
    assert torch.equal(result[0], fake_features(1.0)()[0])  # the generation goes on
    assert list(folder.iterdir()) == []


def test_an_unwritable_folder_keeps_entries_in_memory(tmp_path):
    video = tmp_path / "picture.mp4"
    video.write_bytes(b"x")
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    cache = FeatureCache(cache_dir=blocked)
    calls = []
    for _ in range(2):
        cache.get_or_compute_region(video, 0.0, 1.0, "enc", lambda: calls.append(1) or fake_features(1.0)())
    assert calls == [1] and cache.stats.memory_hits == 1


ENGINE = """
import sys, torch
from stepfoley.engine.features.cache import FeatureCache
video, folder, seed = sys.argv[1], sys.argv[2], int(sys.argv[3])
entry = lambda v: (torch.full((1, 64, 1024), v), torch.full((1, 192, 768), v))
rng = torch.Generator().manual_seed(seed)
for _ in range(12):
    start = float(torch.randint(0, 4, (1,), generator=rng))
    # a fresh object each call: every call goes to the folder, as a restarted engine's does
    got = FeatureCache(cache_dir=folder, max_disk_bytes=2_500_000).get_or_compute_region(
        video, start, start + 1, "enc", lambda: entry(start))
    assert all(torch.equal(g, e) for g, e in zip(got, entry(start))), start
"""


def test_engines_sharing_a_folder_never_see_a_broken_entry(tmp_path):
    """Two engine processes read, write and evict real-size entries (0.8 MB) in one folder
    while this process reads every entry file it sees: each engine gets its own features back,
    and no file is ever seen broken (test_a_failed_write_leaves_no_entry pins the temp-then-
    rename that guarantees it; timing alone rarely catches a non-atomic writer)."""
    import subprocess

    video = tmp_path / "picture.mp4"
    video.write_bytes(b"x")
    folder = tmp_path / "features"
    engines = [subprocess.Popen([sys.executable, "-c", ENGINE, str(video), str(folder), str(seed)],
                                stderr=subprocess.PIPE, text=True) for seed in range(2)]
    broken, seen = [], 0
    while any(e.poll() is None for e in engines):
        for path in entries(folder) if folder.is_dir() else []:
            try:
                load_file(str(path))
                seen += 1
            except Exception as e:  # noqa: BLE001 - a file that does not load is the failure ...
                # ... unless it was evicted between the listing and the open (safetensors says
                # so in its own error); the name may already be back, written again by the
                # other engine, so its existing now proves nothing. A torn file fails to parse.
                if not isinstance(e, FileNotFoundError) and "No such file or directory" not in str(e):
                    broken.append(f"{path.name}: {e}")
    assert [e.wait() for e in engines] == [0, 0], [e.stderr.read() for e in engines]
    assert not broken and seen > 0
    assert 1 <= len(entries(folder)) <= 3  # under the 2.5 MB cap
    assert not [p for p in folder.iterdir() if p.name.endswith(".part")]


# --- where the cache lives, and how the engine opens it ------------------------------------


def test_user_cache_dir_per_platform(monkeypatch, tmp_path):
    monkeypatch.setenv("STEPFOLEY_CACHE_DIR", str(tmp_path / "mine"))
    assert user_cache_dir() == tmp_path / "mine"
    assert default_feature_cache_dir() == tmp_path / "mine" / "features"
    monkeypatch.delenv("STEPFOLEY_CACHE_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
    monkeypatch.setenv("LOCALAPPDATA", str(tmp_path / "local"))
    monkeypatch.setattr(sys, "platform", "linux")
    assert user_cache_dir() == tmp_path / "xdg" / "stepfoley"
    monkeypatch.delenv("XDG_CACHE_HOME")
    assert user_cache_dir() == tmp_path / "home" / ".cache" / "stepfoley"
    monkeypatch.setattr(sys, "platform", "darwin")
    assert user_cache_dir() == tmp_path / "home" / "Library" / "Caches" / "stepfoley"
    monkeypatch.setattr(sys, "platform", "win32")
    assert user_cache_dir() == tmp_path / "local" / "stepfoley" / "Cache"


def test_open_feature_cache_default_off_folder_and_size(tmp_path):
    default = open_feature_cache()
    assert default.cache_dir == default_feature_cache_dir() and default.cache_dir.is_dir()
    assert default.max_disk_bytes == 5_000_000_000
    assert open_feature_cache("off").cache_dir is None
    chosen = open_feature_cache(tmp_path / "new", 0.5)
    assert chosen.cache_dir == tmp_path / "new" and chosen.cache_dir.is_dir()
    assert chosen.max_disk_bytes == 500_000_000
    # the folder is made, not the path to it: a mistyped team cache was made anew, parents and all
    with pytest.raises(InvalidInputError, match=f"the folder it would be made in, '{tmp_path / 'typo'}', does not "
                                                "exist; check the path"):
        open_feature_cache(tmp_path / "typo" / "folder")
    assert not (tmp_path / "typo").exists()
    # the same for $STEPFOLEY_CACHE_DIR: its features/ is made, not the folder the variable names
    with pytest.MonkeyPatch.context() as env:
        env.setenv("STEPFOLEY_CACHE_DIR", str(tmp_path / "team-cahce"))
        with pytest.raises(InvalidInputError, match=r"does not exist; check the path in \$STEPFOLEY_CACHE_DIR"):
            open_feature_cache()
        assert not (tmp_path / "team-cahce").exists()
        (tmp_path / "team-cahce").mkdir()
        assert open_feature_cache().cache_dir == tmp_path / "team-cahce" / "features"
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(InvalidInputError, match=r"a-file' cannot be used \(it is a file, not a folder\).*--feature-cache off"):
        open_feature_cache(tmp_path / "a-file")
    if os.path.isdir("/proc"):  # root passes its permission bits (the CI's user); only making a file tells
        with pytest.raises(InvalidInputError, match="'/proc' cannot be used .*--feature-cache off"):
            open_feature_cache("/proc")
    for size in (0, -1.0, float("nan"), float("inf")):
        with pytest.raises(InvalidInputError, match="gigabytes above 0"):
            open_feature_cache("off", size)


def test_a_default_folder_that_cannot_be_used_keeps_features_in_memory(tmp_path, monkeypatch, caplog):
    """A cache no one asked for stopped every generation from starting (a read-only home)."""
    (tmp_path / "a-file").write_text("x")
    monkeypatch.delenv("STEPFOLEY_CACHE_DIR", raising=False)
    monkeypatch.setattr(sys, "platform", "linux")
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a-file"))
    with caplog.at_level("WARNING"):
        assert open_feature_cache().cache_dir is None
    assert "picture features are kept in memory only" in caplog.text
    monkeypatch.setenv("STEPFOLEY_CACHE_DIR", str(tmp_path / "a-file" / "chosen"))  # one the user chose: said
    with pytest.raises(InvalidInputError, match="--feature-cache off"):
        open_feature_cache()


def test_the_cli_default_size_is_the_engines():
    from stepfoley.commands import runtime
    from stepfoley.engine import devices
    from stepfoley.engine.features.cache import DEFAULT_MAX_DISK_GB, MAX_DISK_GB

    assert runtime.FEATURE_CACHE_MAX_GB == DEFAULT_MAX_DISK_GB
    # and the bounds --help states are the ones the engine enforces
    assert (runtime.FEATURE_CACHE_LIMIT_GB, runtime.THREADS_PER_CORE) == (MAX_DISK_GB, devices.THREADS_PER_CORE)


def test_a_restarted_engine_reuses_the_picture_features(tmp_path):
    """build_service's default cache through the session: the second engine never runs the
    video encoder for a region the first one saw."""
    from stepfoley.lab.miniworld import make_scene, write_scene
    from stepfoley.engine.pipeline import Region
    from stepfoley.engine.service import build_service
    from stepfoley.engine.session import StepSession, TrackSettings

    video = write_scene(make_scene(20_000_003, duration=3.0), tmp_path)["video"]
    calls = []
    for engine in range(2):
        service = build_service(model="tiny-random", device="cpu")
        assert service.feature_cache.cache_dir == default_feature_cache_dir()
        encode = service.model.video_encoder.encode_region
        service.model.video_encoder.encode_region = lambda *a, **k: calls.append(engine) or encode(*a, **k)
        session = StepSession(service.model, Region(video, 0.0, 2.0), service.feature_cache)
        session.next_track(TrackSettings("rain", steps=1))
    assert calls == [0]


def test_serve_takes_the_cache_options_and_demo_none(tmp_path, capsys, monkeypatch):
    import stepfoley.engine.service
    from stepfoley.cli import main
    from stepfoley.engine.errors import CheckpointError

    given = []

    def stop_after_recording(*args, feature_cache=None, **kwargs):
        given.append(feature_cache)
        raise CheckpointError("no model in this test")

    monkeypatch.setattr(stepfoley.engine.service, "build_service", stop_after_recording)
    assert main(["serve", "--port", "0", "--feature-cache", str(tmp_path / "mine"), "--feature-cache-max-gb", "2"]) == 1
    assert given[0].cache_dir == tmp_path / "mine" and given[0].max_disk_bytes == 2_000_000_000
    assert main(["serve", "--port", "0", "--feature-cache", "off"]) == 1
    assert given[1].cache_dir is None
    (tmp_path / "a-file").write_text("x")
    assert main(["serve", "--port", "0", "--feature-cache", str(tmp_path / "a-file")]) == 2  # before loading
    assert len(given) == 2 and "feature cache folder" in capsys.readouterr().err

    # the demo's clip is new every run: its features are kept in memory, and it has no such options
    monkeypatch.setattr(stepfoley.engine.service, "load_runtime_model", stop_after_recording)
    with pytest.raises(SystemExit) as refused:
        main(["demo", "--out", str(tmp_path / "demo"), "--feature-cache-max-gb", "2"])
    assert refused.value.code == 2 and len(given) == 2
    assert "unrecognized arguments: --feature-cache-max-gb" in capsys.readouterr().err


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX rights")
def test_the_cache_and_the_state_are_readable_by_this_user_only(tmp_path, monkeypatch):
    # their files name the user's videos and output folders (another user on the machine could list them)
    old_umask = os.umask(0o022)
    try:
        monkeypatch.delenv("STEPFOLEY_CACHE_DIR", raising=False)
        monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
        monkeypatch.setenv("HOME", str(tmp_path / "home"))
        default_feature_cache_dir().mkdir(parents=True, mode=0o755)        # made readable by an earlier version
        assert open_feature_cache().cache_dir.stat().st_mode & 0o777 == 0o700
        assert open_feature_cache(tmp_path / "chosen").cache_dir.stat().st_mode & 0o777 == 0o700
        (tmp_path / "shared").mkdir(mode=0o755)                             # the user's own choice stays
        assert open_feature_cache(tmp_path / "shared").cache_dir.stat().st_mode & 0o777 == 0o755
        # a team's cache, named by $STEPFOLEY_CACHE_DIR or linked in at the default place: its
        # group's rights and setgid bit stay (they were taken away, and other users refused)
        (tmp_path / "team" / "features").mkdir(parents=True)
        for folder in (tmp_path / "team", tmp_path / "team" / "features"):
            folder.chmod(0o2775)
        monkeypatch.setenv("STEPFOLEY_CACHE_DIR", str(tmp_path / "team"))
        assert open_feature_cache().cache_dir.stat().st_mode & 0o7777 == 0o2775
        monkeypatch.delenv("STEPFOLEY_CACHE_DIR")
        default_feature_cache_dir().rmdir()
        default_feature_cache_dir().symlink_to(tmp_path / "team" / "features")
        assert open_feature_cache().cache_dir.stat().st_mode & 0o7777 == 0o2775
        from stepfoley.engine import output_folders

        monkeypatch.delenv("STEPFOLEY_STATE_DIR", raising=False)
        monkeypatch.setenv("XDG_STATE_HOME", str(tmp_path / "xdg"))
        output_folders.remember(tmp_path)
        assert output_folders.state_dir().stat().st_mode & 0o777 == 0o700
        monkeypatch.setenv("STEPFOLEY_STATE_DIR", str(tmp_path / "chosen_state"))  # the user's own: kept
        (tmp_path / "chosen_state").mkdir(mode=0o755)
        output_folders.remember(tmp_path)
        assert (tmp_path / "chosen_state").stat().st_mode & 0o777 == 0o755
    finally:
        os.umask(old_umask)
