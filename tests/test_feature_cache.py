"""FeatureCache through MMAudioVideoEncoder with small real CLIP and Synchformer networks;
forward calls are counted with hooks on those networks, the cache itself is not mocked."""

import numpy as np
import pytest
import torch

from stepfoley.engine.errors import VideoError
from stepfoley.engine.features.cache import FeatureCache, region_key
from stepfoley.engine.features.clip import ClipConfig, ClipModel, encode_clip_frames
from stepfoley.engine.features.mmaudio_features import MMAudioVideoEncoder
from stepfoley.engine.features.synchformer import SynchformerConfig, SynchformerVisual, encode_sync_frames
from stepfoley.engine.video import expected_frame_counts, read_regions
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

    def encoder(self, cache, **kw):
        return MMAudioVideoEncoder(self.clip, self.sync, cache=cache, clip_size=28, **kw)


@pytest.fixture
def nets():
    return Counted()


def test_second_track_of_a_region_skips_both_extractors(tmp_path, nets):
    video = write_video(tmp_path / "picture.mp4")
    encoder = nets.encoder(FeatureCache())
    clip_f, sync_f = encoder.encode_region(video, 0.1, 1.1)
    counts = expected_frame_counts(1.0)
    assert clip_f.shape == (1, counts.clip_frames, 24)
    assert sync_f.shape == (1, counts.sync_seq_len, 16)
    assert nets.calls == {"clip": 1, "sync": 1}  # one batched forward each

    again = encoder.encode_region(video, 0.1, 1.1)
    assert nets.calls == {"clip": 1, "sync": 1}
    assert torch.equal(again[0], clip_f) and torch.equal(again[1], sync_f)
    assert encoder.cache.stats.memory_hits == 1 and encoder.cache.stats.misses == 1

    encoder.encode_region(video, 0.2, 1.1)  # another region is computed
    assert nets.calls == {"clip": 2, "sync": 2}

    # the cached features are those of the uncached path
    clip_frames, sync_frames = read_regions(video, 0.1, 1.1, encoder.requests)
    torch.testing.assert_close(clip_f, encode_clip_frames(nets.clip, clip_frames))
    torch.testing.assert_close(sync_f, encode_sync_frames(nets.sync, sync_frames))


def test_a_re_exported_file_with_the_same_name_is_recomputed(tmp_path, nets):
    video = write_video(tmp_path / "picture.mp4", seed=1)
    encoder = nets.encoder(FeatureCache())
    first = encoder.encode_region(video, 0.0, 1.0)
    write_video(tmp_path / "picture.mp4", seconds=1.16, seed=2)
    second = encoder.encode_region(video, 0.0, 1.0)
    assert nets.calls == {"clip": 2, "sync": 2}
    assert not torch.equal(first[0], second[0])


def test_disk_cache_survives_a_restart_and_leaves_no_temp_files(tmp_path, nets):
    video = write_video(tmp_path / "picture.mp4")
    cache_dir = tmp_path / "features"
    first = nets.encoder(FeatureCache(cache_dir=cache_dir)).encode_region(video, 0.0, 1.0)
    files = list(cache_dir.iterdir())
    assert len(files) == 1 and files[0].suffix == ".safetensors"
    assert not files[0].name.startswith(".tmp-")

    restarted = nets.encoder(FeatureCache(cache_dir=cache_dir))  # empty memory, same directory
    again = restarted.encode_region(video, 0.0, 1.0)
    assert nets.calls == {"clip": 1, "sync": 1} and restarted.cache.stats.disk_hits == 1
    assert torch.equal(again[0], first[0]) and torch.equal(again[1], first[1])

    files[0].write_bytes(b"damaged")  # a broken cache file is recomputed, not trusted
    fresh = nets.encoder(FeatureCache(cache_dir=cache_dir)).encode_region(video, 0.0, 1.0)
    assert nets.calls == {"clip": 2, "sync": 2}
    assert torch.equal(fresh[1], first[1])


def test_other_weights_do_not_share_entries(tmp_path, nets):
    video = write_video(tmp_path / "picture.mp4")
    cache = FeatureCache()
    nets.encoder(cache).encode_region(video, 0.0, 1.0)
    with torch.no_grad():
        nets.sync.norm.weight.mul_(2.0)  # retrained / other checkpoint -> other fingerprint
    nets.encoder(cache).encode_region(video, 0.0, 1.0)
    assert nets.calls == {"clip": 2, "sync": 2}
    nets.encoder(cache, extractor_id="explicit").encode_region(video, 0.0, 1.0)
    nets.encoder(cache, extractor_id="explicit").encode_region(video, 0.0, 1.0)
    assert nets.calls == {"clip": 3, "sync": 3}


def test_memory_is_bounded_least_recently_used_goes_first(tmp_path, nets):
    video = write_video(tmp_path / "picture.mp4")
    probe_cache = FeatureCache()
    nets.encoder(probe_cache).encode_region(video, 0.0, 1.0)
    entry_bytes = probe_cache._bytes
    cache = FeatureCache(max_bytes=2 * entry_bytes)
    encoder = nets.encoder(cache)
    for start in (0.0, 0.04, 0.08):  # three regions, room for two
        encoder.encode_region(video, start, start + 1.0)
    assert len(cache) == 2 and cache._bytes <= cache.max_bytes
    before = dict(nets.calls)
    encoder.encode_region(video, 0.08, 1.08)  # newest: still cached
    assert nets.calls == before
    encoder.encode_region(video, 0.0, 1.0)  # oldest: evicted, computed again
    assert nets.calls["sync"] == before["sync"] + 1


def test_missing_video_is_a_video_error_not_a_cache_error(tmp_path, nets):
    with pytest.raises(VideoError, match="gone.mp4"):
        nets.encoder(FeatureCache()).encode_region(tmp_path / "gone.mp4", 0.0, 1.0)


def test_tuple_keys_and_tuple_results_as_the_session_uses_them(tmp_path):
    video = write_video(tmp_path / "picture.mp4", seconds=0.4)
    calls = []

    def compute():
        calls.append(1)
        return torch.arange(6.0).reshape(1, 2, 3), torch.ones(1, 4, 2)

    for cache_dir in (None, tmp_path / "disk"):
        cache = FeatureCache(cache_dir=cache_dir)
        key = region_key(video, 0.0, 0.4, "encoder-a")
        first = cache.get_or_compute(key, compute)
        second = cache.get_or_compute(key, compute)
        assert isinstance(second, tuple) and len(second) == 2
        assert torch.equal(first[0], second[0]) and torch.equal(first[1], second[1])
    assert len(calls) == 2  # one miss per cache
    reloaded = FeatureCache(cache_dir=tmp_path / "disk").get_or_compute(key, compute)
    assert len(calls) == 2 and isinstance(reloaded, tuple)
    assert torch.equal(reloaded[0], torch.arange(6.0).reshape(1, 2, 3))
