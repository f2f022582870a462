"""engine.mmaudio against the MMAudio reference (golden mmaudio_flow_*.safetensors), plus the
behaviour StepFoley adds on top: control residuals, batched conditions, shorter regions.

On a CPU with AVX-512 the oneDNN convolutions round differently from the machine that made the
fixtures, so results differ by ~1e-5 (well inside each fixture's tolerance); with
ATEN_CPU_CAPABILITY=avx2 DNNL_MAX_CPU_ISA=AVX2 every output and intermediate is bit-exact.
"""

import json
from dataclasses import fields

import pytest
import torch
import torch.nn.functional as F
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import golden_files
from stepfoley.engine.errors import InvalidInputError
from stepfoley.engine.mmaudio import (MMAudio, MMAudioConfig, PreprocessedConditions, SequenceLengths,
                            sync_upsample_index)

FLOW_FIXTURES = golden_files("mmaudio_flow_*.safetensors")


def read_fixture(path):
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        metadata = f.metadata()
    groups = {}
    for name, value in tensors.items():
        group, _, key = name.partition(".")
        groups.setdefault(group, {})[key] = value
    return groups, metadata


def run_with_intermediates(net, inputs):
    """outputs.flow and every intermediate the fixtures define, named as they are there."""
    got = {}

    def keep(name):
        def hook(module, args, output):
            got.setdefault(name, output)  # the forward's call, not later ones (empty conditions)
        return hook

    def keep_joint(i):
        def hook(module, args, output):
            for stream, value in zip(("latent", "clip_f", "text_f"), output):
                got[f"joint_blocks.{i}_out.{stream}"] = value
        return hook

    def keep_fused_input(module, args):
        got["extended_c"] = args[1]

    def keep_final_input(module, args):
        got["final_layer_in.latent"], got["final_layer_in.global_c"] = args

    handles = [net.audio_input_proj.register_forward_hook(keep("audio_input_proj_out")),
               net.sync_input_proj.register_forward_hook(keep("sync_input_proj_out")),
               net.t_embed.register_forward_hook(keep("t_embed_out")),
               net.global_cond_mlp.register_forward_hook(keep("global_cond_mlp_out")),
               net.final_layer.register_forward_pre_hook(keep_final_input)]
    handles += [b.register_forward_hook(keep_joint(i)) for i, b in enumerate(net.joint_blocks)]
    handles += [b.register_forward_hook(keep(f"fused_blocks.{i}_out")) for i, b in enumerate(net.fused_blocks)]
    if len(net.fused_blocks):
        handles.append(net.fused_blocks[0].register_forward_pre_hook(keep_fused_input))
    try:
        with torch.no_grad():
            flow = net(inputs["latent"], inputs["clip_f"], inputs["sync_f"], inputs["text_f"], inputs["t"])
            cond = net.preprocess_conditions(inputs["clip_f"], inputs["sync_f"], inputs["text_f"])
            for prefix, cond in (("cond", cond), ("empty_cond", net.get_empty_conditions(2))):
                for f in fields(cond):
                    got[f"{prefix}.{f.name}"] = getattr(cond, f.name)
    finally:
        for h in handles:
            h.remove()
    n = inputs["latent"].shape[1]
    got["t_embed_freqs"] = net.t_embed.frequencies(torch.device("cpu"))
    got["rope.latent_rot"] = net.latent_rope(n)
    got["rope.clip_rot"] = net.clip_rope(inputs["clip_f"].shape[1], n)
    got["sync_upsample_src_index"] = net.sync_upsample_index(inputs["sync_f"].shape[1], n)
    return flow, got


def test_the_flow_fixtures_exist(golden):
    # the tests below are one per fixture: without any, they would skip without saying why
    assert FLOW_FIXTURES, f"no mmaudio_flow_*.safetensors in {golden}"


@pytest.mark.parametrize("path", FLOW_FIXTURES, ids=[p.stem for p in FLOW_FIXTURES])
def test_flow_network_matches_reference(golden, path):
    groups, metadata = read_fixture(path)
    tol = json.loads(metadata["tolerance"])
    net = MMAudio(MMAudioConfig(**json.loads(metadata["config"])))
    net.load_weights(groups["weights"])
    net.eval()

    flow, got = run_with_intermediates(net, groups["inputs"])

    torch.testing.assert_close(flow, groups["outputs"]["flow"], atol=tol["atol"], rtol=tol["rtol"],
                               msg=lambda m: f"{path.name} outputs.flow: {m}")
    expected = groups.get("intermediates", {})
    not_checked = sorted(set(expected) - set(got))
    assert not not_checked, f"{path.name}: intermediates this test cannot recompute: {not_checked}"
    for name, want in expected.items():
        have = got[name]
        if want.dtype.is_floating_point:
            torch.testing.assert_close(have.float(), want, atol=tol["atol"], rtol=tol["rtol"],
                                       msg=lambda m: f"{path.name} intermediates.{name}: {m}")
        else:
            assert torch.equal(have.to(want.dtype), want), f"{path.name} intermediates.{name} differs"
    # v2's t frequencies reach 1e4 rad: a differently rounded but equal formula moves the flow by
    # ~5e-4, inside v2's atol, so only bit-equality of the table catches it.
    if "t_embed_freqs" in expected:
        assert torch.equal(got["t_embed_freqs"], expected["t_embed_freqs"]), f"{path.name}: t_embed_freqs not bit-exact"


@pytest.mark.parametrize("path", FLOW_FIXTURES, ids=[p.stem for p in FLOW_FIXTURES])
def test_load_weights_drops_stale_buffers_and_keeps_callers_dict(golden, path):
    groups, metadata = read_fixture(path)
    cfg = MMAudioConfig(**json.loads(metadata["config"]))
    weights = dict(groups["weights"])
    weights["latent_rot"] = torch.zeros(1, cfg.latent_seq_len, cfg.head_dim // 2, 2, 2)
    weights["clip_rot"] = torch.zeros(1, cfg.clip_seq_len, cfg.head_dim // 2, 2, 2)
    weights["t_embed.freqs"] = torch.zeros(128)
    net = MMAudio(cfg)
    net.load_weights(weights)
    assert "latent_rot" in weights  # not mutated, unlike the reference
    assert torch.equal(net.state_dict()["latent_std"], groups["weights"]["latent_std"])


@pytest.mark.parametrize("src,dst", [(192, n) for n in (1, 7, 125, 173, 249, 250, 345, 400)] + [(96, 125), (8, 3)])
def test_sync_upsample_index_is_pytorch_nearest_exact(src, dst):
    rows = torch.arange(src, dtype=torch.float32).view(1, 1, src)
    copied = F.interpolate(rows, size=dst, mode="nearest-exact").view(dst).to(torch.int64)
    assert torch.equal(sync_upsample_index(src, dst), copied)


# ---------------------------------------------------------------------------------------------
# Behaviour beyond the reference, on a tiny randomly initialised network


TINY = MMAudioConfig(latent_dim=8, clip_dim=12, sync_dim=16, text_dim=10, hidden_dim=32, depth=3, fused_depth=1,
                     num_heads=2, latent_seq_len=50, clip_seq_len=16, sync_seq_len=48, text_seq_len=7, name="tiny")


def tiny_net(cfg=TINY, seed=0):
    """Random weights everywhere: the real init zeroes adaLN and the output, which would hide bugs."""
    torch.manual_seed(seed)
    net = MMAudio(cfg).eval()
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in net.named_parameters():
            p.copy_(torch.randn(p.shape, generator=gen) / max(1, p[0].numel()) ** 0.5)
        net.latent_std.abs_().add_(0.5)
    return net


def tiny_inputs(cfg=TINY, bs=2, lengths=None, seed=1):
    lengths = lengths or cfg.seq_lengths
    gen = torch.Generator().manual_seed(seed)
    return dict(latent=torch.randn(bs, lengths.latent, cfg.latent_dim, generator=gen),
                clip_f=torch.randn(bs, lengths.clip, cfg.clip_dim, generator=gen),
                sync_f=torch.randn(bs, lengths.sync, cfg.sync_dim, generator=gen),
                text_f=torch.randn(bs, cfg.text_seq_len, cfg.text_dim, generator=gen),
                t=torch.tensor([0.25, 0.7])[:bs])


@torch.no_grad()
def test_zero_control_equals_no_control():
    net, x = tiny_net(), tiny_inputs()
    cond = net.preprocess_conditions(x["clip_f"], x["sync_f"], x["text_f"])
    zeros = [torch.zeros(2, TINY.latent_seq_len, TINY.hidden_dim) for _ in range(net.num_blocks)]
    assert torch.equal(net.predict_flow(x["latent"], x["t"], cond, control=zeros),
                       net.predict_flow(x["latent"], x["t"], cond))


@pytest.mark.parametrize("block", range(TINY.depth))
@torch.no_grad()
def test_control_residual_at_each_block_changes_flow(block):
    net, x = tiny_net(), tiny_inputs()
    cond = net.preprocess_conditions(x["clip_f"], x["sync_f"], x["text_f"])
    base = net.predict_flow(x["latent"], x["t"], cond)
    control = [torch.zeros(2, TINY.latent_seq_len, TINY.hidden_dim) for _ in range(block + 1)]
    # Random across channels: a per-token constant would vanish in the next LayerNorm.
    control[block][1, 10:20] = torch.randn(10, TINY.hidden_dim, generator=torch.Generator().manual_seed(3))
    flow = net.predict_flow(x["latent"], x["t"], cond, control=control)
    assert torch.equal(flow[0], base[0]), "a residual on one batch row leaked into another"
    assert (flow[1] - base[1]).abs().max() > 1e-3


@torch.no_grad()
def test_control_of_wrong_shape_is_rejected():
    net, x = tiny_net(), tiny_inputs()
    cond = net.preprocess_conditions(x["clip_f"], x["sync_f"], x["text_f"])
    with pytest.raises(InvalidInputError, match="Control residual 0"):
        net.predict_flow(x["latent"], x["t"], cond, control=[torch.zeros(2, 10, TINY.hidden_dim)])


@torch.no_grad()
def test_precomputed_latent_embedding_gives_the_same_flow():
    net, x = tiny_net(), tiny_inputs()
    cond = net.preprocess_conditions(x["clip_f"], x["sync_f"], x["text_f"])
    embedded = net.embed_latent(x["latent"])
    flow = net.predict_flow(x["latent"], x["t"], cond)
    assert torch.equal(net.predict_flow(x["latent"], x["t"], cond, latent_embedding=embedded), flow)
    # and it is really what the blocks read, not a recomputation
    assert not torch.equal(net.predict_flow(x["latent"], x["t"], cond, latent_embedding=embedded + 0.1), flow)
    with pytest.raises(InvalidInputError, match="latent embedding has shape"):
        net.predict_flow(x["latent"], x["t"], cond, latent_embedding=embedded[:1])


@torch.no_grad()
def test_batched_cond_and_empty_rows_match_separate_forwards():
    net, x = tiny_net(), tiny_inputs(bs=1)
    cond = net.preprocess_conditions(x["clip_f"], x["sync_f"], x["text_f"])
    empty = net.get_empty_conditions(1)
    t = torch.tensor(0.4)  # a 0-dim time, as the Euler grid passes it
    both = net.predict_flow(x["latent"].expand(2, -1, -1), t, cond.cat(empty))
    torch.testing.assert_close(both[:1], net.predict_flow(x["latent"], t, cond), atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(both[1:], net.predict_flow(x["latent"], t, empty), atol=1e-5, rtol=1e-5)


@torch.no_grad()
def test_empty_conditions_with_negative_text_keep_its_batch():
    net = tiny_net()
    negative = torch.randn(3, TINY.text_seq_len, TINY.text_dim, generator=torch.Generator().manual_seed(5))
    empty = net.get_empty_conditions(3, negative_text_features=negative)
    plain = net.get_empty_conditions(3)
    assert empty.clip_f.shape == (3, TINY.clip_seq_len, TINY.hidden_dim)
    assert empty.clip_f.stride(0) == 0  # empty video computed once and broadcast
    assert torch.equal(empty.clip_f, plain.clip_f) and torch.equal(empty.sync_f, plain.sync_f)
    assert not torch.equal(empty.text_f_c[0], empty.text_f_c[1])
    torch.testing.assert_close(empty.text_f[2], net.text_input_proj(negative[2:]).squeeze(0), atol=1e-6, rtol=1e-6)


def test_conditions_expand_and_cat_shapes():
    H = 4
    one = PreprocessedConditions(torch.zeros(1, 3, H), torch.zeros(1, 5, H), torch.zeros(1, 2, H),
                                 torch.zeros(1, H), torch.zeros(1, H))
    two = PreprocessedConditions(torch.ones(2, 3, H), torch.ones(2, 5, H), torch.ones(2, 2, H),
                                 torch.ones(2, H), torch.ones(2, H))
    joined = one.cat(two)
    assert joined.batch_size == 3 and joined.sync_f.shape == (3, 5, H)
    assert joined.sync_f[0].eq(0).all() and joined.sync_f[1:].eq(1).all()
    assert one.expand(4).clip_f.shape == (4, 3, H)
    with pytest.raises(InvalidInputError):
        two.expand(3)
    short = PreprocessedConditions(torch.zeros(1, 3, H), torch.zeros(1, 4, H), torch.zeros(1, 2, H),
                                   torch.zeros(1, H), torch.zeros(1, H))
    with pytest.raises(InvalidInputError, match="region lengths"):
        one.cat(short)


def test_sequence_lengths_for_duration_reproduce_the_8s_configs():
    for name in MMAudioConfig.preset_names():
        cfg = MMAudioConfig.preset(name)
        sample_rate, hop = (16000, 256) if name.endswith("16k") else (44100, 512)
        assert SequenceLengths.for_duration(8.0, sample_rate, hop) == cfg.seq_lengths


@pytest.mark.parametrize("half", [SequenceLengths(125, 32, 96), SequenceLengths.for_duration(4.0, 16000, 256)],
                         ids=["125-32-96", "4s"])
@torch.no_grad()
def test_region_shorter_than_8s_runs(half):
    cfg = MMAudioConfig(**{**{f.name: getattr(TINY, f.name) for f in fields(TINY)},
                           "latent_seq_len": 250, "clip_seq_len": 64, "sync_seq_len": 192})
    net = tiny_net(cfg)
    x = tiny_inputs(cfg, lengths=half)
    cond = net.preprocess_conditions(x["clip_f"], x["sync_f"], x["text_f"], latent_seq_len=half.latent)
    flow = net.predict_flow(x["latent"], x["t"], cond)
    assert flow.shape == (2, 125, cfg.latent_dim) and torch.isfinite(flow).all()
    empty = net.get_empty_conditions(2, seq_lengths=half)
    assert torch.isfinite(net.predict_flow(x["latent"], x["t"], empty)).all()
    # Positions are absolute, so the 4 s tables are the first rows of the 8 s ones
    # (CLIP: 125/32 == 250/64).
    assert torch.equal(net.latent_rope(125), net.latent_rope(250)[:, :125])
    assert torch.equal(net.clip_rope(32, 125), net.clip_rope(64, 250)[:, :32])
    with pytest.raises(InvalidInputError, match="latent_seq_len"):
        net.preprocess_conditions(x["clip_f"], x["sync_f"], x["text_f"])


def test_normalize_is_pure_and_inverted_by_unnormalize():
    net = tiny_net()
    x = torch.randn(2, 5, TINY.latent_dim)
    before = x.clone()
    z = net.normalize(x)
    assert torch.equal(x, before)
    torch.testing.assert_close(net.unnormalize(z), x, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(z, (x - net.latent_mean) / net.latent_std)


@torch.no_grad()
def test_runs_under_bfloat16_autocast():
    net, x = tiny_net(), tiny_inputs()
    reference = net(**x)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        flow = net(**x)
    assert flow.dtype == torch.float32 and torch.isfinite(flow).all()
    assert (flow - reference).abs().max() < 0.1 * reference.abs().max()


@torch.no_grad()
def test_runs_as_a_bfloat16_model_with_float32_time():
    net, x = tiny_net(), tiny_inputs()
    reference = net(**x)
    net = net.to(torch.bfloat16)
    flow = net(**{k: (v if k == "t" else v.to(torch.bfloat16)) for k, v in x.items()})
    assert flow.dtype == torch.bfloat16 and torch.isfinite(flow).all()
    assert net.latent_rope(TINY.latent_seq_len).dtype == torch.float32  # rotation stays float32
    assert (flow.float() - reference).abs().max() < 0.1 * reference.abs().max()


def test_wrong_feature_width_names_the_model():
    net, x = tiny_net(), tiny_inputs()
    with pytest.raises(InvalidInputError, match="'tiny'.*clip_dim"):
        net.preprocess_conditions(x["clip_f"][..., :5], x["sync_f"], x["text_f"])
