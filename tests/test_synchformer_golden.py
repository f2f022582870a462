"""Synchformer visual encoder against the reference fixtures (README §8):
synchformer.safetensors (reduced, stored weights, intermediates) and
synchformer_full_crc.safetensors (full size, key-derived weights)."""

import hashlib
import json
import math
import zlib

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import golden_files
from stepfoley.engine.errors import CheckpointError, InvalidInputError
from stepfoley.engine.features.synchformer import (
    CHECKPOINT_PREFIX,
    SynchformerConfig,
    SynchformerVisual,
    encode_sync_frames,
    load_synchformer_weights,
    sync_windows,
)


def fixture(path):
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    return tensors, meta


def config_of(meta) -> SynchformerConfig:
    cfg = json.loads(meta["config"])
    size = cfg.get("resulting", cfg)
    return SynchformerConfig(embed_dim=size["embed_dim"], depth=size["depth"],
                             num_heads=size["num_heads"])


def rule_video() -> torch.Tensor:
    b, s, t, c, y, x = torch.meshgrid(*(torch.arange(n) for n in (1, 1, 16, 3, 224, 224)),
                                      indexing="ij")
    k = (3 * x * x + 5 * y * y + 7 * x * y + 29 * t + 61 * c + 13 * (x // 16) * (y // 16)
         + 17 * s + 19 * b) % 256
    return k.to(torch.float32) / 127.5 - 1.0


def check_video(video, tensors, meta):
    digest = hashlib.sha256(video.contiguous().numpy().tobytes()).hexdigest()
    assert digest == meta["video_sha256"].split()[0]
    assert torch.equal(video[0, 0, :, :, :16, :16], tensors["inputs.video_first_patch"])


def crc_weights(model: SynchformerVisual) -> dict:
    weights = {}
    for key in sorted(f"{CHECKPOINT_PREFIX}.{k}" for k in model.state_dict()):
        shape = model.state_dict()[key[len(CHECKPOINT_PREFIX) + 1:]].shape
        g = torch.Generator().manual_seed(zlib.crc32(key.encode()))
        if len(shape) >= 2:
            value = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        elif key.endswith("weight"):
            value = 1 + 0.1 * torch.randn(shape, generator=g)
        else:
            value = 0.1 * torch.randn(shape, generator=g)
        weights[key] = value
    return weights


def test_the_synchformer_fixtures_exist(golden):
    # the tests below are one per fixture: without any, they would skip without saying why
    for name in ("synchformer.safetensors", "synchformer_full_crc.safetensors"):
        assert golden_files(name), f"no {name} in {golden}"


@pytest.mark.parametrize("path", golden_files("synchformer.safetensors"), ids=lambda p: p.name)
def test_reduced_synchformer_matches_reference_with_intermediates(golden, path):
    tensors, meta = fixture(path)
    tol = json.loads(meta["tolerance"])
    model = SynchformerVisual(config_of(meta)).eval()
    weights = {k[len("weights."):]: v for k, v in tensors.items() if k.startswith("weights.")}
    # the official file also holds audio / transformer keys: they must be discarded
    weights["afeat_extractor.dummy"] = torch.zeros(3)
    load_synchformer_weights(model, weights)
    video = rule_video()
    check_video(video, tensors, meta)

    seen = {}
    hooks = [model.patch_embed_3d.register_forward_hook(
        lambda m, i, o: seen.__setitem__("patch_embed_3d_out", o))]
    hooks += [block.register_forward_hook(
        lambda m, i, o, n=n: seen.__setitem__(f"blocks.{n}_out", o))
        for n, block in enumerate(model.blocks)]
    hooks.append(model.spatial_attn_agg.register_forward_pre_hook(
        lambda m, i: seen.__setitem__("spatial_attn_agg_in", i[0])))
    with torch.no_grad():
        out = model(video)
    for h in hooks:
        h.remove()
    for name, ref in tensors.items():
        if name.startswith("intermediates."):
            torch.testing.assert_close(seen[name[len("intermediates."):]], ref,
                                       atol=tol["atol"], rtol=tol["rtol"])
    torch.testing.assert_close(out, tensors["outputs.features"], atol=tol["atol"], rtol=tol["rtol"])


@pytest.mark.slow
@pytest.mark.parametrize("path", golden_files("synchformer_full_crc.safetensors"),
                         ids=lambda p: p.name)
def test_full_size_synchformer_matches_reference(golden, path):
    tensors, meta = fixture(path)
    tol = json.loads(meta["tolerance"])
    torch.manual_seed(0)
    model = SynchformerVisual(config_of(meta)).eval()
    weights = crc_weights(model)
    digest = hashlib.sha256()
    for key in sorted(weights):
        digest.update(key.encode())
        digest.update(weights[key].contiguous().numpy().tobytes())
    assert digest.hexdigest() == meta["weights_rule_sha256"].split()[0]
    assert sum(v.numel() for v in weights.values()) == int(meta["num_parameters"])
    load_synchformer_weights(model, weights)
    video = rule_video()
    check_video(video, tensors, meta)
    with torch.no_grad():
        out = model(video)
    torch.testing.assert_close(out, tensors["outputs.features"], atol=tol["atol"], rtol=tol["rtol"])


def test_state_dict_matches_official_manifest_key_for_key(golden):
    manifest = json.loads((golden / "manifests" / "synchformer_vfeat_extractor.json").read_text())
    with torch.device("meta"):
        model = SynchformerVisual(SynchformerConfig())
    mine = [(f"{CHECKPOINT_PREFIX}.{k}", list(v.shape)) for k, v in model.state_dict().items()]
    theirs = [(e["key"], e["shape"]) for e in manifest["state_dict"]]
    assert mine == theirs
    assert sum(p.numel() for p in model.parameters()) == manifest["num_parameters"]


def test_encode_sync_frames_windows_like_mmaudio():
    cfg = SynchformerConfig(embed_dim=32, depth=1, num_heads=2)
    torch.manual_seed(3)
    model = SynchformerVisual(cfg).eval()
    for p in model.parameters():
        p.data.normal_(0, 0.2)
    frames = torch.randint(0, 256, (40, 3, 224, 224), dtype=torch.uint8)
    windows = sync_windows(frames, cfg)
    assert windows.shape == (4, 16, 3, 224, 224)  # (40 - 16) // 8 + 1
    torch.testing.assert_close(windows[2, 5], frames[2 * 8 + 5].float() / 255 * 2 - 1)
    features = encode_sync_frames(model, frames)
    assert features.shape == (1, 4 * 8, 32)
    with torch.no_grad():  # window by window, as MMAudio's batch loop would
        one_by_one = torch.cat([model(windows[i][None, None]) for i in range(4)], dim=1)
    torch.testing.assert_close(features, one_by_one.reshape(1, 32, 32), atol=1e-5, rtol=1e-5)
    assert torch.allclose(encode_sync_frames(model, frames, batch_segments=3), features,
                          atol=1e-5, rtol=1e-5)


def test_too_short_region_and_foreign_checkpoint_are_explained():
    cfg = SynchformerConfig(embed_dim=32, depth=1, num_heads=2)
    model = SynchformerVisual(cfg)
    with pytest.raises(InvalidInputError, match="too short for Synchformer"):
        sync_windows(torch.zeros(10, 3, 224, 224, dtype=torch.uint8), cfg)
    with pytest.raises(CheckpointError, match="no 'vfeat_extractor"):
        load_synchformer_weights(model, {"model.weight": torch.zeros(1)})
    bad = {f"{CHECKPOINT_PREFIX}.{k}": v for k, v in model.state_dict().items()}
    bad[f"{CHECKPOINT_PREFIX}.norm.weight"] = torch.zeros(7)
    with pytest.raises(CheckpointError, match="wrong shape: norm.weight"):
        load_synchformer_weights(model, bad)
