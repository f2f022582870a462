"""The NAG ControlNet: exact no-op at initialization, frozen base, per-block residuals, files."""
import json
import math
import os

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

from stepfoley.engine.controlnet import (
    AudioControlNet,
    ControlNetConfig,
    base_config_id,
    load_controlnet,
    read_controlnet_config,
    save_controlnet,
)
from stepfoley.engine.errors import CheckpointError, InvalidInputError
from stepfoley.engine.mmaudio import MMAudio, MMAudioConfig

TINY = MMAudioConfig(latent_dim=6, clip_dim=12, sync_dim=10, text_dim=14, hidden_dim=32, depth=4,
                     fused_depth=2, num_heads=2, latent_seq_len=20, clip_seq_len=8, sync_seq_len=16,
                     text_seq_len=5)
B, N = 2, TINY.latent_seq_len


def randomize(module, seed):
    """Golden-style random weights: MMAudio zero-initializes its adaLN and output layers, and an
    all-zero network would make every comparison trivially true."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / math.sqrt(p[0].numel()))
            elif name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))
        if hasattr(module, "latent_std"):
            module.latent_std.copy_(0.5 + torch.rand(module.latent_std.shape, generator=g))
    return module


@pytest.fixture(scope="module")
def base():
    torch.manual_seed(0)
    return randomize(MMAudio(TINY), seed=1).eval()


def features(seed, batch=B):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(batch, TINY.clip_seq_len, TINY.clip_dim, generator=g),
            torch.randn(batch, TINY.sync_seq_len, TINY.sync_dim, generator=g),
            torch.randn(batch, TINY.text_seq_len, TINY.text_dim, generator=g))


def video_only_conditions(net, clip_f, sync_f):
    empty_text = net.empty_string_feat.unsqueeze(0).expand(clip_f.shape[0], -1, -1)
    return net.preprocess_conditions(clip_f, sync_f, empty_text)


def step_inputs(seed):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, N, TINY.latent_dim, generator=g), torch.rand(B, generator=g),
            torch.randn(B, N, TINY.latent_dim, generator=g))


def test_config_for_base_matches_the_base():
    config = ControlNetConfig.for_base(TINY, depth=3)
    assert (config.hidden_dim, config.num_heads, config.latent_dim) == (32, 2, 6)
    assert config.base_config == base_config_id(TINY)
    with pytest.raises(InvalidInputError):
        ControlNetConfig.for_base(TINY, depth=TINY.depth + 1)


def test_base_config_id_ignores_the_name_but_not_the_sizes():
    assert base_config_id(MMAudioConfig.preset("small_16k")) != base_config_id(MMAudioConfig.preset("small_44k"))
    named = MMAudioConfig(**{**TINY.__dict__, "name": "tiny"})
    assert base_config_id(named) == base_config_id(TINY)


def test_fresh_controlnet_is_an_exact_no_op(base):
    controlnet = AudioControlNet(ControlNetConfig.for_base(TINY, depth=3))
    video_only = video_only_conditions(base, *features(3)[:2])
    latent, t, audio_latent = step_inputs(4)
    with torch.no_grad():
        residuals = controlnet(latent, t, video_only, audio_latent, base=base)
        assert len(residuals) == 3 and all(r.shape == (B, N, TINY.hidden_dim) for r in residuals)
        assert all(bool((r == 0).all()) for r in residuals)
        assert bool((controlnet.embed_condition(audio_latent) == 0).all())
        u_psi = base.predict_flow(latent, t, video_only, control=residuals)
        u_theta = base.predict_flow(latent, t, video_only)
    assert torch.equal(u_psi, u_theta)


def test_from_base_copies_the_blocks_its_residuals_feed_and_is_still_a_no_op(base):
    controlnet = AudioControlNet.from_base(base, depth=2)
    fed = [base.joint_blocks[0].latent_block, base.joint_blocks[1].latent_block]  # residual i goes after block i
    assert base.config.depth - base.config.fused_depth >= 2
    for block, source in zip(controlnet.blocks, fed, strict=True):
        for (k, a), (_, b) in zip(block.state_dict().items(), source.state_dict().items()):
            assert torch.equal(a, b), k
    video_only = video_only_conditions(base, *features(5)[:2])
    latent, t, audio_latent = step_inputs(6)
    with torch.no_grad():
        residuals = controlnet(latent, t, video_only, audio_latent, base=base)
        assert torch.equal(base.predict_flow(latent, t, video_only, control=residuals),
                           base.predict_flow(latent, t, video_only))


def trained_looking(depth=3, seed=7):
    return randomize(AudioControlNet(ControlNetConfig.for_base(TINY, depth=depth)), seed).eval()


def test_residuals_depend_on_the_audio_condition_and_reach_the_flow(base):
    controlnet = trained_looking()
    video_only = video_only_conditions(base, *features(8)[:2])
    latent, t, audio_latent = step_inputs(9)
    with torch.no_grad():
        first = controlnet(latent, t, video_only, audio_latent, base=base)
        other = controlnet(latent, t, video_only, audio_latent + 1.0, base=base)
        assert all((a - b).abs().max() > 1e-3 for a, b in zip(first, other))
        flow = base.predict_flow(latent, t, video_only, control=first)
        assert (flow - base.predict_flow(latent, t, video_only)).abs().max() > 1e-3
        # Precomputed condition features give the same residuals.
        features_once = controlnet.embed_condition(audio_latent)
        again = controlnet(latent, t, video_only, None, base=base, audio_features=features_once)
    assert all(torch.equal(a, b) for a, b in zip(first, again))


def test_residual_position_selects_the_base_block(base):
    # The same residual added after block 1 or after block 0 must give different flows.
    controlnet = trained_looking()
    video_only = video_only_conditions(base, *features(10)[:2])
    latent, t, audio_latent = step_inputs(11)
    with torch.no_grad():
        residuals = controlnet(latent, t, video_only, audio_latent, base=base)
        only_second = [torch.zeros_like(residuals[0]), residuals[1]]
        flow = base.predict_flow(latent, t, video_only, control=only_second)
        shifted = [residuals[1], torch.zeros_like(residuals[0])]
        assert (flow - base.predict_flow(latent, t, video_only, control=shifted)).abs().max() > 1e-4


def test_training_updates_the_controlnet_never_the_base(base):
    controlnet = trained_looking(depth=2).train()
    video_only = video_only_conditions(base, *features(12)[:2])
    latent, t, audio_latent = step_inputs(13)
    base.requires_grad_(True)  # as a trainer might leave it; the ControlNet must freeze it
    before = {k: v.clone() for k, v in base.state_dict().items()}
    optimizer = torch.optim.SGD(controlnet.parameters(), lr=0.1)
    residuals = controlnet(latent, t, video_only, audio_latent, base=base)
    loss = base.predict_flow(latent, t, video_only, control=residuals).square().mean()
    loss.backward()
    assert all(p.grad is None for p in base.parameters())
    assert not any(p.requires_grad for p in base.parameters())
    assert all(p.grad is not None for p in controlnet.parameters())
    optimizer.step()
    assert all(torch.equal(before[k], v) for k, v in base.state_dict().items())
    assert not any(k.startswith(("audio_input_proj", "fused_blocks")) for k in controlnet.state_dict())


def test_a_controlnet_for_another_base_is_refused_at_run_time(base):
    other = MMAudioConfig(**{**TINY.__dict__, "depth": 5, "fused_depth": 3})
    controlnet = AudioControlNet(ControlNetConfig.for_base(other, depth=2))
    video_only = video_only_conditions(base, *features(14)[:2])
    latent, t, audio_latent = step_inputs(15)
    with pytest.raises(CheckpointError, match="another base model"):
        controlnet(latent, t, video_only, audio_latent, base=base)


# ---------------------------------------------------------------- files


def test_save_and_load_round_trip(tmp_path, base):
    controlnet = trained_looking()
    path = save_controlnet(tmp_path / "nag.safetensors", controlnet)
    assert sorted(os.listdir(tmp_path)) == ["nag.safetensors"]  # no temporary file left
    with safe_open(str(path), "pt") as f:
        stored = json.loads(f.metadata()["config"])
    assert stored["depth"] == 3 and stored["base_config"] == base_config_id(TINY)
    loaded = load_controlnet(path, TINY)
    assert loaded.config == controlnet.config and not loaded.training
    for (k, a), (_, b) in zip(controlnet.state_dict().items(), loaded.state_dict().items()):
        assert torch.equal(a, b), k


def test_save_keeps_an_existing_file_unless_told(tmp_path):
    path = tmp_path / "nag.safetensors"
    path.write_bytes(b"the user's file")
    with pytest.raises(InvalidInputError, match="already exists"):
        save_controlnet(path, trained_looking())
    assert path.read_bytes() == b"the user's file"
    save_controlnet(path, trained_looking(), overwrite=True)
    assert load_controlnet(path, TINY).config.depth == 3


def test_load_refuses_a_controlnet_holding_infinities(tmp_path):
    controlnet = trained_looking()
    with torch.no_grad():
        next(controlnet.parameters()).fill_(float("inf"))
    path = save_controlnet(tmp_path / "nag.safetensors", controlnet)
    with pytest.raises(CheckpointError, match=r"nag\.safetensors: 1 tensor holds values that are not numbers .*"
                                              r"download or train it again"):
        load_controlnet(path, TINY)


def test_load_refuses_a_controlnet_for_another_base(tmp_path):
    path = save_controlnet(tmp_path / "nag.safetensors", trained_looking())
    other = MMAudioConfig(**{**TINY.__dict__, "hidden_dim": 64})
    with pytest.raises(CheckpointError) as info:
        load_controlnet(path, other)
    message = str(info.value)
    assert "another base model" in message and "nag.safetensors" in message and "hidden 64" in message


def test_load_refuses_missing_corrupt_and_foreign_files(tmp_path):
    with pytest.raises(CheckpointError, match="does not exist"):
        load_controlnet(tmp_path / "absent.safetensors", TINY)
    garbage = tmp_path / "garbage.safetensors"
    garbage.write_bytes(b"\x00" * 64)
    with pytest.raises(CheckpointError):
        load_controlnet(garbage, TINY)
    foreign = tmp_path / "foreign.safetensors"
    save_file({"w": torch.zeros(2)}, str(foreign))
    with pytest.raises(CheckpointError, match="not a StepFoley NAG ControlNet"):
        load_controlnet(foreign, TINY)


def test_load_refuses_a_file_whose_tensors_do_not_match_its_config(tmp_path):
    path = save_controlnet(tmp_path / "nag.safetensors", trained_looking())
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys() if not k.startswith("blocks.2.")}
    damaged = tmp_path / "damaged.safetensors"
    save_file(tensors, str(damaged), metadata=metadata)
    with pytest.raises(CheckpointError, match="damaged"):
        load_controlnet(damaged, TINY)


@pytest.mark.parametrize("change, words", [
    ({"depth": 2.5}, "depth must be a whole number of at least 1, got 2.5"),
    ({"depth": True}, "depth must be a whole number"),
    ({"mlp_ratio": "4"}, "mlp_ratio must be a number above 0, got '4'"),
    ({"condition_dim": -3}, "condition_dim must be a whole number of at least 1, got -3"),
    # sizes that fit no block of this base: every NAG job failed as a bad request, or a
    # billion-parameter network was built before the file was refused
    ({"depth": 8}, "does not fit its base model: depth 8 (the base has 4 blocks)"),
    ({"depth": 20000}, "depth 20000 (the base has 4 blocks)"),
    ({"hidden_dim": 64, "num_heads": 4}, "hidden_dim 64 (the base's 32), num_heads 4 (the base's 2)"),
    ({"mlp_ratio": 2.0}, "mlp_ratio 2.0 (the base's 4.0)"),
])
def test_a_stored_configuration_that_cannot_run_on_the_base_is_refused_from_the_header(tmp_path, change, words):
    path = save_controlnet(tmp_path / "nag.safetensors", trained_looking())
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    metadata["config"] = json.dumps({**json.loads(metadata["config"]), **change})
    edited = tmp_path / "edited.safetensors"
    save_file(tensors, str(edited), metadata=metadata)
    with pytest.raises(CheckpointError) as info:
        read_controlnet_config(edited, TINY)
    assert words in str(info.value)
