"""engine.codec against the MMAudio reference fixtures (mel_*, vae_*, bigvgan_* in the golden
folder, README sections 5-7) and the full-size manifests; plus the BigVGAN-v2 folder loader
and MMAudioCodec.from_directory on small checkpoints written in the official layout."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import golden_files
from stepfoley.engine.codec.bigvgan import BigVGAN, BigVGANConfig, load_generator, to_parametrization_keys
from stepfoley.engine.codec.bigvgan_v2 import config_problems, load_bigvgan_v2
from stepfoley.engine.codec.mel import MelConfig, MelConverter
from stepfoley.engine.codec.mmaudio_codec import MMAudioCodec
from stepfoley.engine.codec.vae import VAE, VAEConfig, load_vae
from stepfoley.engine.weights import read_weights

torch.set_num_threads(1)


def fixture(path):
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    groups = {"weights": {}, "inputs": {}, "outputs": {}, "intermediates": {}}
    for key, value in tensors.items():
        group, name = key.split(".", 1)
        groups[group][name] = value
    return groups, json.loads(meta["config"]), json.loads(meta["tolerance"])


def assert_close(mine, ref, tol, what):
    torch.testing.assert_close(mine, ref, atol=tol["atol"], rtol=tol["rtol"], msg=lambda m: f"{what}: {m}")


def golden_manifest(golden, name):
    m = json.loads((golden / "manifests" / name).read_text())
    return [(e["key"], list(e["shape"])) for e in m["state_dict"]], m


# --- mel (README §5) ----------------------------------------------------------------------


def test_mel_converters_match_mel_fixtures(golden):
    paths = golden_files("mel_*.safetensors")
    assert paths, "no mel_*.safetensors fixture"
    for path in paths:
        g, cfg, tol = fixture(path)
        conv = MelConverter(MelConfig.preset(cfg["mode"]))
        # The filterbank is our own code, not librosa's: compare it on its own first.
        torch.testing.assert_close(conv.mel_basis, g["intermediates"]["mel_basis"], atol=1e-7, rtol=1e-6)
        torch.testing.assert_close(conv.hann_window, g["intermediates"]["hann_window"], atol=0, rtol=0)
        assert_close(conv(g["inputs"]["waveform"]), g["outputs"]["mel"], tol, path.name)


# --- VAE (README §6) ----------------------------------------------------------------------


def test_vae_matches_vae_fixtures(golden):
    paths = golden_files("vae_*.safetensors")
    assert paths, "no vae_*.safetensors fixture"
    for path in paths:
        g, cfg, tol = fixture(path)
        weights = g["weights"]
        before = {k: v.clone() for k, v in weights.items()}
        vae = load_vae(weights, VAEConfig(cfg["data_dim"], cfg["embed_dim"], cfg["hidden_dim"]))
        for k, v in before.items():  # loading must not modify the caller's tensors
            assert torch.equal(weights[k], v), f"{path.name}: load_vae changed {k} in place"
        state = vae.state_dict()
        for key, ref in g["intermediates"].items():
            if key.startswith("post_weight_norm."):
                torch.testing.assert_close(state[key[len("post_weight_norm.") :]], ref, atol=1e-7, rtol=1e-6)
        with torch.no_grad():
            mel = g["inputs"]["mel"]
            assert_close(vae.encoder(vae.normalize(mel)), g["intermediates"]["encoder_moments"], tol, f"{path.name} moments")
            posterior = vae.encode(mel)
            assert_close(posterior.mean, g["outputs"]["encode_mean"], tol, f"{path.name} mean")
            assert_close(posterior.logvar, g["outputs"]["encode_logvar"], tol, f"{path.name} logvar")
            assert_close(posterior.std, g["outputs"]["encode_std"], tol, f"{path.name} std")
            assert_close(vae.decode(g["inputs"]["z"]), g["outputs"]["decode"], tol, f"{path.name} decode")


@pytest.mark.parametrize("mode", ["16k", "44k"])
def test_vae_full_size_preset_has_manifest_layout(golden, mode):
    expected, manifest = golden_manifest(golden, f"vae_{mode}.json")
    with torch.device("meta"):
        vae = VAE(VAEConfig.preset(mode))
    assert [(k, list(v.shape)) for k, v in vae.state_dict().items()] == expected
    assert sum(p.numel() for p in vae.parameters()) == manifest["num_parameters"]


# --- BigVGAN 16 kHz (README §7) ----------------------------------------------------------


def run_with_taps(model: BigVGAN, mel: torch.Tensor) -> tuple[torch.Tensor, dict]:
    taps = {}

    def keep(name):
        return lambda module, inputs, output: taps.__setitem__(name, output)

    hooks = [model.conv_pre.register_forward_hook(keep("conv_pre_out"))]
    hooks += [up[0].register_forward_hook(keep(f"ups.{i}_out")) for i, up in enumerate(model.ups)]
    hooks.append(model.activation_post.register_forward_hook(keep("activation_post_out")))
    hooks.append(model.conv_post.register_forward_hook(keep("conv_post_out_pre_tanh")))
    with torch.no_grad():
        out = model(mel)
    for h in hooks:
        h.remove()
    return out, taps


def test_bigvgan_matches_bigvgan_fixtures_in_every_weight_norm_layout(golden):
    paths = golden_files("bigvgan_*.safetensors")
    assert paths, "no bigvgan_*.safetensors fixture"
    for path in paths:
        g, cfg, tol = fixture(path)
        config = BigVGANConfig.from_dict(cfg)
        legacy = g["weights"]
        assert any(k.endswith(".weight_g") for k in legacy)  # the fixture's documented layout
        model = load_generator(legacy, config)
        out, taps = run_with_taps(model, g["inputs"]["mel"])
        assert_close(out, g["outputs"]["waveform"], tol, f"{path.name} waveform")
        for name, ref in g["intermediates"].items():
            assert_close(taps[name], ref, tol, f"{path.name} {name}")
        # The same weights under parametrization names, and already folded, give the same audio.
        folded = model.state_dict()
        assert not any("parametrizations" in k for k in folded)
        for layout in (to_parametrization_keys(legacy), folded):
            with torch.no_grad():
                torch.testing.assert_close(load_generator(layout, config)(g["inputs"]["mel"]), out, atol=0, rtol=0)


def test_bigvgan_builds_the_stored_anti_alias_filters(golden):
    # The checkpoint brings its filters, but a model built from config must compute the same ones.
    paths = golden_files("bigvgan_*.safetensors")
    assert paths, f"no bigvgan_*.safetensors in {golden}"
    for path in paths:
        g, cfg, _ = fixture(path)
        fresh = BigVGAN(BigVGANConfig.from_dict(cfg)).state_dict()
        filters = [k for k in g["weights"] if k.endswith("filter")]
        assert filters
        for key in filters:
            torch.testing.assert_close(fresh[key], g["weights"][key], atol=1e-8, rtol=0)


def test_bigvgan_full_size_preset_has_manifest_layout(golden):
    expected, manifest = golden_manifest(golden, "bigvgan_16k_generator.json")
    with torch.device("meta"):
        model = BigVGAN(BigVGANConfig.preset("mmaudio_16k"))
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == expected
    assert sum(p.numel() for p in model.parameters()) == manifest["num_parameters"]
    assert BigVGANConfig.from_dict(manifest["config"]) == BigVGANConfig.preset("mmaudio_16k")


# --- BigVGAN-v2 44.1 kHz (README "BigVGAN-v2, 44.1 kHz": bigvgan2_44k.safetensors) -------


def test_the_official_bigvgan_v2_config_passes_the_weights_check(golden, tmp_path):
    # bigvgan2_44k.safetensors records the official config.json (its width as
    # official_upsample_initial_channel): `weights check` must call that one right
    _, cfg, _ = fixture(golden / "bigvgan2_44k.safetensors")
    official = {**cfg, "upsample_initial_channel": cfg["official_upsample_initial_channel"]}
    (tmp_path / "config.json").write_text(json.dumps(official))
    assert config_problems(tmp_path) == []
    (tmp_path / "config.json").write_text(json.dumps(cfg))  # the fixture's reduced width is another BigVGAN
    assert "upsample_initial_channel 64, not 1536" in config_problems(tmp_path)[0]


def test_bigvgan_v2_folder_matches_bigvgan2_44k_fixture(golden, tmp_path):
    # The fixture's weights and config as nvidia/bigvgan_v2_44khz_128band_512x ships them:
    # config.json and bigvgan_generator.pt["generator"], loaded by the engine's folder loader.
    path = golden / "bigvgan2_44k.safetensors"
    g, cfg, tol = fixture(path)
    assert not g["intermediates"], "the fixture now holds intermediates: check them too"
    folder = tmp_path / "bigvgan_v2_44khz_128band_512x"
    folder.mkdir()
    (folder / "config.json").write_text(json.dumps(cfg))
    torch.save({"generator": g["weights"]}, folder / "bigvgan_generator.pt")
    model = load_bigvgan_v2(folder, read_weights)
    assert model.config == BigVGANConfig.from_dict({**V2_SMALL_CONFIG, "upsample_initial_channel": 64})
    wave, taps = run_with_taps(model, g["inputs"]["mel"])
    assert_close(wave, g["outputs"]["waveform"], tol, f"{path.name} waveform")
    # No tanh: inside (-1, 1) the output is conv_post's own value (the fixture keeps it there).
    assert taps["conv_post_out_pre_tanh"].abs().max() < 1
    torch.testing.assert_close(wave, taps["conv_post_out_pre_tanh"], atol=0, rtol=0)
    # The legacy weight_g/weight_v names of the same weights give the same audio.
    with torch.no_grad():
        legacy = load_generator(legacy_layout(g["weights"]), model.config)(g["inputs"]["mel"])
    torch.testing.assert_close(legacy, wave, atol=0, rtol=0)
    # The anti-alias filters a model computes from its config are the stored ones.
    fresh = BigVGAN(model.config).state_dict()
    filters = [k for k in g["weights"] if k.endswith("filter")]
    assert filters
    for key in filters:
        torch.testing.assert_close(fresh[key], g["weights"][key], atol=1e-8, rtol=0)


# --- BigVGAN-v2 folder round trip (a small checkpoint in the official layout) -------------

V2_SMALL_CONFIG = {
    # nvidia/bigvgan_v2_44khz_128band_512x config.json with the width cut from 1536 to 64,
    # including keys the generator must ignore.
    "resblock": "1",
    "num_gpus": 0,
    "batch_size": 4,
    "upsample_rates": [8, 4, 2, 2, 2, 2],
    "upsample_kernel_sizes": [16, 8, 4, 4, 4, 4],
    "upsample_initial_channel": 64,
    "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "use_tanh_at_final": False,
    "use_bias_at_final": False,
    "activation": "snakebeta",
    "snake_logscale": True,
    "use_cqtd_instead_of_mrd": True,
    "num_mels": 128,
    "n_fft": 2048,
    "hop_size": 512,
    "win_size": 2048,
    "sampling_rate": 44100,
    "fmin": 0,
    "fmax": None,
    "use_cuda_kernel": False,
}


def legacy_layout(state_dict):
    """How torch.nn.utils.weight_norm (NVIDIA's training code) names the weight-norm tensors."""
    out = {}
    for key, value in state_dict.items():
        key = key.replace(".parametrizations.weight.original0", ".weight_g").replace(".parametrizations.weight.original1", ".weight_v")
        out[key] = value
    return out


def write_bigvgan_v2_folder(folder, seed=0):
    folder.mkdir(parents=True)
    torch.manual_seed(seed)
    model = BigVGAN(BigVGANConfig.from_dict(V2_SMALL_CONFIG))
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith(("alpha", "beta")):
                p.copy_(0.1 * torch.randn_like(p))
        # A loud final conv so that some outputs leave [-1, 1]: the clamp must show.
        model.conv_post.parametrizations.weight.original0.mul_(20.0)
    (folder / "config.json").write_text(json.dumps(V2_SMALL_CONFIG))
    torch.save({"generator": legacy_layout(model.state_dict())}, folder / "bigvgan_generator.pt")
    return model


def test_bigvgan_v2_folder_round_trip(tmp_path):
    reference = write_bigvgan_v2_folder(tmp_path / "bigvgan_v2")
    loaded = load_bigvgan_v2(tmp_path / "bigvgan_v2", read_weights)
    assert loaded.conv_post.bias is None  # use_bias_at_final: false
    assert not any("parametrizations" in k or k.endswith("_g") for k in loaded.state_dict())
    mel = torch.randn(2, 128, 6, generator=torch.Generator().manual_seed(1)) - 4.0
    wave, taps = run_with_taps(loaded, mel)
    with torch.no_grad():
        expected = reference.remove_weight_norm()(mel)
    assert wave.shape == (2, 1, 6 * 512)
    torch.testing.assert_close(wave, expected, atol=0, rtol=0)
    pre = taps["conv_post_out_pre_tanh"]
    # use_tanh_at_final: false -> a hard clamp: values inside (-1, 1) pass unchanged.
    assert (pre.abs() > 1).any() and ((pre.abs() > 0.3) & (pre.abs() < 1)).any()
    torch.testing.assert_close(wave, pre.clamp(-1, 1), atol=0, rtol=0)


def test_bigvgan_v2_full_size_key_layout_matches_packaged_manifest():
    from stepfoley.engine.weights import manifest_path

    with torch.device("meta"):
        model = BigVGAN(BigVGANConfig.preset("v2_44k_512x"))
    packed = json.loads(manifest_path("bigvgan_v2_44k").read_text())
    assert [(k, list(v.shape)) for k, v in model.state_dict().items()] == [(e["key"], e["shape"]) for e in packed["state_dict"]]
    assert "conv_post.bias" not in model.state_dict()
    assert BigVGANConfig.from_dict({**V2_SMALL_CONFIG, "upsample_initial_channel": 1536}) == BigVGANConfig.preset("v2_44k_512x")


# --- MMAudioCodec ---------------------------------------------------------------------------


def small_weights_dir(golden, root, mode):
    """A weights folder with the official names holding the reduced fixture weights."""
    g_vae, cfg_vae, tol = fixture(golden / f"vae_{mode}.safetensors")
    (root / "ext_weights").mkdir(parents=True)
    torch.save(g_vae["weights"], root / "ext_weights" / ("v1-16.pth" if mode == "16k" else "v1-44.pth"))
    vae_config = VAEConfig(cfg_vae["data_dim"], cfg_vae["embed_dim"], cfg_vae["hidden_dim"])
    if mode == "16k":
        g_voc, cfg_voc, _ = fixture(golden / "bigvgan_16k.safetensors")
        torch.save({"generator": g_voc["weights"], "optimizer": {}}, root / "ext_weights" / "best_netG.pt")
        return g_vae, vae_config, BigVGANConfig.from_dict(cfg_voc), g_voc["weights"], tol
    model = write_bigvgan_v2_folder(root / "ext_weights" / "bigvgan_v2_44khz_128band_512x")
    return g_vae, vae_config, None, legacy_layout(model.state_dict()), tol


@pytest.mark.parametrize("mode", ["16k", "44k"])
def test_codec_from_directory_decodes_and_encodes(golden, tmp_path, mode):
    g_vae, vae_config, voc_config, voc_weights, tol = small_weights_dir(golden, tmp_path, mode)
    codec = MMAudioCodec.from_directory(tmp_path, mode, vae_config=vae_config, vocoder_config=voc_config)
    assert codec.sample_rate == (16_000 if mode == "16k" else 44_100)
    assert codec.latent_dim == vae_config.embed_dim
    assert codec.latent_length(8.0) == codec.latent_length(16.03 - 8.03) == (250 if mode == "16k" else 345)
    # MMAudio's SequenceConfig: ceil(duration * rate / hop / 2), a part of a sample included
    for duration in (1.161, 2.322, 5.805, 7.4, 1.0):
        assert codec.latent_length(duration) == math.ceil(duration * codec.sample_rate / codec.samples_per_latent)

    # decode: channels-last latent -> the fixture's VAE decode (golden) -> the vocoder.
    z = g_vae["inputs"]["z"]  # (B, C, N) channels-first
    wave = codec.decode(z.transpose(1, 2))
    vocoder = load_generator(voc_weights, voc_config or BigVGANConfig.from_dict(V2_SMALL_CONFIG))
    with torch.no_grad():
        expected = vocoder(g_vae["outputs"]["decode"]).squeeze(1)
    assert wave.shape == (2, z.shape[-1] * codec.samples_per_latent)
    assert_close(wave, expected, tol, f"{mode} decode")

    # encode: whole latents only, posterior mean, channels-last.
    audio = 0.5 * torch.sin(torch.arange(3 * codec.samples_per_latent * 8 + 100) * 0.05).repeat(2, 1)
    latent = codec.encode(audio)
    assert latent.shape == (2, 24, codec.latent_dim)
    vae = load_vae(g_vae["weights"], vae_config)
    with torch.no_grad():
        mel = MelConverter(MelConfig.preset(mode))(audio[:, : 24 * codec.samples_per_latent])
        posterior = vae.encode(mel)
        torch.testing.assert_close(latent, posterior.mean.transpose(1, 2))
    mean, std = codec.encode_posterior(audio)  # MMAudio's training draws its targets from both
    torch.testing.assert_close(mean, latent)
    torch.testing.assert_close(std, posterior.std.transpose(1, 2))


def test_codec_prefers_safetensors_copy_and_decode_only(golden, tmp_path):
    from stepfoley.engine.checkpoints import save_safetensors_atomic

    g_vae, vae_config, voc_config, _, _ = small_weights_dir(golden, tmp_path, "16k")
    # A copy whose weights differ from the .pth: the codec must read the copy.
    changed = {k: (v * 0.5 if k == "decoder.conv_in.weight" else v) for k, v in g_vae["weights"].items()}
    changed["decoder.learnable_gain"] = changed["decoder.learnable_gain"] + 1.0
    save_safetensors_atomic(changed, tmp_path / "ext_weights" / "v1-16.safetensors")
    codec = MMAudioCodec.from_directory(tmp_path, "16k", need_encoder=False, vae_config=vae_config, vocoder_config=voc_config)
    assert codec.vae.decoder.learnable_gain.item() == pytest.approx(changed["decoder.learnable_gain"].item())
    with pytest.raises(Exception, match="decoding only"):
        codec.encode(torch.zeros(1, 4096))
