"""The real MMAudio stack end to end, with reduced random weights in the official layout.

A temporary weights folder holds every file `stepfoley generate --weights DIR` reads, under
its official name and in its official format (docs/weights.md): the flow network (with a
stale `latent_rot` key, as old checkpoints have), the mel VAE, the 16 kHz BigVGAN (legacy
weight_g/weight_v names under "generator"), the BigVGAN-v2 folder (config.json +
bigvgan_generator.pt), the Synchformer file (only `vfeat_extractor.*` is used), the
open_clip CLIP folder with a BPE vocabulary, and NAG ControlNets. Only the sizes are
reduced; engine.loading.StackConfigs hands them to the same loaders the full models use.
"""

from __future__ import annotations

import functools
import gzip
import json

import numpy as np
import pytest
import soundfile as sf
import torch

import stepfoley.engine.loading
from stepfoley.engine.codec.bigvgan import BigVGAN, BigVGANConfig
from stepfoley.engine.codec.vae import VAE, VAEConfig
from stepfoley.engine.controlnet import AudioControlNet, save_controlnet
from stepfoley.engine.errors import CheckpointError
from stepfoley.engine.features.clip import ClipConfig, ClipModel
from stepfoley.engine.features.synchformer import SynchformerConfig, SynchformerVisual
from stepfoley.engine.loading import StackConfigs, load_foley_model
from stepfoley.engine.mmaudio import MMAudio, MMAudioConfig
from stepfoley.engine.pipeline import Region
from stepfoley.engine.session import StepSession, TrackSettings

# --- reduced sizes, consistent with each other ------------------------------------------

MERGES = ["f o", "fo o", "foo t</w>", "s t", "st e", "ste p", "step s</w>", "r a", "ra in</w>"]
VOCAB_SIZE = 512 + len(MERGES) + 2  # byte tokens (x2 for end-of-word), merges, <start>/<end>
# 384 px CLIP frames (what the MMAudio video path feeds) / 48 px patches = an 8x8 grid.
CLIP = ClipConfig(embed_dim=24, image_size=384, patch_size=48, vision_width=32, vision_layers=1,
                  vision_head_width=16, context_length=77, vocab_size=VOCAB_SIZE, text_width=32,
                  text_heads=2, text_layers=1)
SYNC = SynchformerConfig(embed_dim=32, depth=1, num_heads=2, image_size=224, patch_size=32)
VAE_16K = VAEConfig(data_dim=80, embed_dim=8, hidden_dim=32)
VAE_44K = VAEConfig(data_dim=128, embed_dim=12, hidden_dim=32)
VOCODER_16K = BigVGANConfig(num_mels=80, upsample_rates=(4, 4, 2, 2, 2, 2),
                            upsample_kernel_sizes=(8, 8, 4, 4, 4, 4), upsample_initial_channel=64)
# nvidia/bigvgan_v2_44khz_128band_512x's config.json with the width cut from 1536 to 64.
BIGVGAN_V2_JSON = {
    "resblock": "1", "num_gpus": 0, "batch_size": 4, "learning_rate": 0.0001,
    "upsample_rates": [8, 4, 2, 2, 2, 2], "upsample_kernel_sizes": [16, 8, 4, 4, 4, 4],
    "upsample_initial_channel": 64, "resblock_kernel_sizes": [3, 7, 11],
    "resblock_dilation_sizes": [[1, 3, 5], [1, 3, 5], [1, 3, 5]],
    "use_tanh_at_final": False, "use_bias_at_final": False, "activation": "snakebeta",
    "snake_logscale": True, "use_cqtd_instead_of_mrd": True, "num_mels": 128, "n_fft": 2048,
    "hop_size": 512, "win_size": 2048, "sampling_rate": 44100, "fmin": 0, "fmax": None,
    "use_cuda_kernel": False,
}


def net_config(latent_dim: int) -> MMAudioConfig:
    return MMAudioConfig(latent_dim=latent_dim, clip_dim=CLIP.embed_dim, sync_dim=SYNC.embed_dim,
                         text_dim=CLIP.text_width, hidden_dim=64, depth=3, fused_depth=1, num_heads=2,
                         name="reduced")


CONFIGS = {
    # The CLIP sizes come from the folder's open_clip_config.json, as for the real model.
    "small_16k": StackConfigs(net=net_config(VAE_16K.embed_dim), vae=VAE_16K, vocoder=VOCODER_16K,
                              synchformer=SYNC),
    # The BigVGAN-v2 sizes come from its folder's config.json.
    "small_44k": StackConfigs(net=net_config(VAE_44K.embed_dim), vae=VAE_44K, synchformer=SYNC),
}
REGION = (0.25, 2.25)  # seconds of the 2.5 s test video


# --- writing the folder -------------------------------------------------------------------


def randomize(module: torch.nn.Module, seed: int, scale: float = 0.05) -> torch.nn.Module:
    """Random weights everywhere (trained-looking: no zero-initialized layer stays a no-op)."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            noise = torch.randn(p.shape, generator=gen)
            if name.endswith("latent_std"):
                p.copy_(0.5 + noise.abs())
            elif p.dim() == 1 and ("norm" in name or "ln_" in name):
                p.copy_(1.0 + 0.1 * noise if name.endswith("weight") else 0.1 * noise)
            else:
                p.copy_(scale * noise)
    return module


def legacy_weight_norm_names(state_dict: dict) -> dict:
    """The names torch.nn.utils.weight_norm gives (how the official BigVGAN files store them)."""
    renamed = {}
    for key, value in state_dict.items():
        key = key.replace(".parametrizations.weight.original0", ".weight_g")
        renamed[key.replace(".parametrizations.weight.original1", ".weight_v")] = value
    return renamed


def write_vae(path, config: VAEConfig, seed: int) -> None:
    torch.manual_seed(seed)
    vae = VAE(config)  # magnitude-preserving convolutions start random already
    state = vae.state_dict()
    state["data_mean"] = torch.full_like(state["data_mean"], -5.0)
    state["data_std"] = torch.full_like(state["data_std"], 2.0)
    for key in state:
        if key.endswith("learnable_gain"):
            state[key] = torch.ones_like(state[key])  # decode to a varying mel, not the mean
    torch.save(state, path)


def write_vocoder(config: BigVGANConfig, seed: int) -> dict:
    torch.manual_seed(seed)
    vocoder = BigVGAN(config)  # its initialization makes a varying, unsaturated waveform
    return legacy_weight_norm_names(vocoder.state_dict())


def write_clip_folder(folder, seed: int) -> None:
    folder.mkdir(parents=True)
    state = dict(randomize(ClipModel(CLIP), seed, scale=0.2).state_dict())
    state["logit_scale"] = torch.tensor(4.6)  # in the real checkpoint, not used for features
    torch.save(state, folder / "open_clip_pytorch_model.bin")
    model_cfg = {"embed_dim": CLIP.embed_dim, "quick_gelu": True,
                 "vision_cfg": {"image_size": CLIP.image_size, "layers": CLIP.vision_layers,
                                "width": CLIP.vision_width, "head_width": CLIP.vision_head_width,
                                "patch_size": CLIP.patch_size},
                 "text_cfg": {"context_length": CLIP.context_length, "vocab_size": CLIP.vocab_size,
                              "width": CLIP.text_width, "heads": CLIP.text_heads, "layers": CLIP.text_layers}}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": model_cfg, "preprocess_cfg": {}}))
    with gzip.open(folder / "bpe_simple_vocab_16e6.txt.gz", "wt", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(MERGES) + "\n")


def write_flow_and_controlnet(root, variant: str, seed: int) -> MMAudio:
    net = randomize(MMAudio(CONFIGS[variant].net), seed)
    state = dict(net.state_dict())
    state["latent_rot"] = torch.zeros(1, 250, 16, 2, 2)  # stale rotary table of old checkpoints
    torch.save(state, root / "weights" / f"mmaudio_{variant}.pth")
    controlnet = randomize(AudioControlNet.from_base(net, depth=2), seed + 1)
    save_controlnet(root / "controlnets" / f"{variant}.safetensors", controlnet)
    return net


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from stepfoley.lab.miniworld import make_scene, write_scene

    root = tmp_path_factory.mktemp("mmaudio-weights")
    for sub in ("weights", "ext_weights", "controlnets"):
        (root / sub).mkdir()
    nets = {v: write_flow_and_controlnet(root, v, seed) for v, seed in (("small_16k", 1), ("small_44k", 2))}
    write_vae(root / "ext_weights" / "v1-16.pth", VAE_16K, seed=3)
    write_vae(root / "ext_weights" / "v1-44.pth", VAE_44K, seed=4)
    torch.save({"generator": write_vocoder(VOCODER_16K, seed=5), "optimizer": {}},
               root / "ext_weights" / "best_netG.pt")
    v2 = root / "ext_weights" / "bigvgan_v2_44khz_128band_512x"
    v2.mkdir()
    (v2 / "config.json").write_text(json.dumps(BIGVGAN_V2_JSON))
    torch.save({"generator": write_vocoder(BigVGANConfig.from_dict(BIGVGAN_V2_JSON), seed=6)},
               v2 / "bigvgan_generator.pt")
    sync = randomize(SynchformerVisual(SYNC), seed=7, scale=0.1)
    sync_state = {f"vfeat_extractor.{k}": v for k, v in sync.state_dict().items()}
    sync_state["afeat_extractor.conv.weight"] = torch.zeros(3, 3)  # audio half: must be ignored
    torch.save(sync_state, root / "ext_weights" / "synchformer_state_dict.pth")
    write_clip_folder(root / "ext_weights" / "DFN5B-CLIP-ViT-H-14-384", seed=8)

    video = write_scene(make_scene(21, duration=2.5), root.parent / "scene", mux_audio=False)["video"]
    return {"root": root, "video": video, "nets": nets}


def two_tracks(model, video) -> tuple:
    session = StepSession(model, Region(video, *REGION))
    first = session.next_track(TrackSettings("footsteps", steps=2, seed=1))
    second = session.next_track(TrackSettings("rain", method="nag", steps=2, seed=2))
    return first, second


def assert_audio(track, sample_rate: int) -> None:
    length = int(round((REGION[1] - REGION[0]) * sample_rate))
    assert track.sample_rate == sample_rate and track.metadata["sample_rate"] == sample_rate
    assert track.samples.shape == (length,) and track.samples.dtype == np.float32
    assert np.isfinite(track.samples).all() and track.samples.std() > 1e-3
    assert (np.abs(track.samples) < 0.999).mean() > 0.99  # a waveform, not a clipped constant


# --- tests --------------------------------------------------------------------------------


@pytest.mark.parametrize("variant, sample_rate", [("small_16k", 16_000), ("small_44k", 44_100)])
def test_generate_two_tracks_with_nag_through_the_official_layout(stack, variant, sample_rate):
    model = load_foley_model(stack["root"], variant, configs=CONFIGS[variant])
    assert model.model_id == f"mmaudio-{variant}+nag" and model.supports_nag and model.note == ""
    assert model.sample_rate == sample_rate
    # The files were read: the network holds the written weights, not a fresh initialization.
    written = stack["nets"][variant].state_dict()
    assert all(torch.equal(v, written[k]) for k, v in model.net.state_dict().items())
    assert model.video_encoder.clip.cfg == CLIP  # sized by the folder's open_clip_config.json
    assert model.video_encoder.synchformer.cfg == SYNC and model.text_encoder.clip is model.video_encoder.clip
    if variant == "small_44k":
        assert model.codec.vocoder.config == BigVGANConfig.from_dict(BIGVGAN_V2_JSON)

    first, second = two_tracks(model, stack["video"])
    assert first.metadata["method_used"] == "independent" and second.metadata["method_used"] == "nag"
    assert first.metadata["model"] == model.model_id
    for track in (first, second):
        assert_audio(track, sample_rate)

    # The ControlNet read from controlnets/<variant>.safetensors steers track 2: the same
    # caption and seed without NAG gives other audio.
    session = StepSession(model, Region(stack["video"], *REGION))
    session.add_track(first.samples, sample_rate, captions=["footsteps"])
    progress = []
    plain = session.next_track(TrackSettings("rain", method="independent", steps=2, seed=2),
                               on_progress=lambda *p: progress.append(p))
    assert plain.metadata["method_used"] == "independent"
    assert not np.allclose(plain.samples, second.samples, atol=1e-6)
    # Picture features report their own progress on a CPU: 2 s = 16 CLIP frames in batches of
    # 8, then Synchformer segments in batches of 4, before any sampling step.
    features = [p for p in progress if p[0] == "features"]
    assert len(features) >= 4 and features[-1][1] == features[-1][2] == model.video_encoder.progress_units(2.0)
    assert [d for _, d, _ in features] == sorted(d for _, d, _ in features)
    assert progress.index(features[-1]) < progress.index(("sampling", 1, 2))


def test_stepfoley_generate_writes_a_wav(stack, tmp_path, monkeypatch, capsys):
    """`stepfoley generate --weights DIR --model small_16k` through the CLI's main(). The CLI
    has no option for reduced sizes, so load_foley_model is wrapped to add them; everything
    else (argument parsing, build_service, the service, the WAV writer) is the real path."""
    from stepfoley.cli import main

    monkeypatch.setattr(stepfoley.engine.loading, "load_foley_model",
                        functools.partial(load_foley_model, configs=CONFIGS["small_16k"]))
    out = tmp_path / "stems"
    out.mkdir()
    argv = ["generate", str(stack["video"]), str(REGION[0]), str(REGION[1]), "footsteps",
            "--weights", str(stack["root"]), "--model", "small_16k", "--steps", "2", "--device", "cpu",
            "--out", str(out)]
    assert main(argv) == 0
    first = sorted(out.glob("*.wav"))
    assert len(first) == 1
    assert f"wrote {first[0]}" in capsys.readouterr().out
    # Track 2 with NAG against track 1, as the REAPER workflow does it.
    assert main(argv[:4] + ["rain", "--existing", str(first[0])] + argv[5:]) == 0
    assert "16000 Hz, method nag" in capsys.readouterr().out
    # Track 3 sounds like a reference recording (MultiFoley's control, same ControlNet).
    assert main(argv[:4] + ["gravel", "--reference", str(first[0])] + argv[5:]) == 0
    assert "16000 Hz, method reference" in capsys.readouterr().out
    assert main(argv + ["--method", "reference"]) == 2  # no --reference given
    assert main(argv + ["--reference", str(first[0]), "--existing", str(first[0])]) == 2
    stems = sorted(out.glob("*.wav"))
    assert len(stems) == 3
    for path in stems:
        info = sf.info(str(path))
        assert info.samplerate == 16_000 and info.channels == 1 and info.subtype == "PCM_24"
        assert info.frames == int(round((REGION[1] - REGION[0]) * 16_000))
        samples, _ = sf.read(str(path))
        assert np.isfinite(samples).all() and np.abs(samples).max() > 0
    assert not list(out.glob(".stepfoley_existing_mix*"))  # the temporary bounce is removed


def test_a_missing_file_names_itself_before_anything_loads(stack, tmp_path, monkeypatch):
    import shutil

    import stepfoley.engine.checkpoints

    def never(*args, **kwargs):
        raise AssertionError("a checkpoint was loaded")

    monkeypatch.setattr(stepfoley.engine.checkpoints, "load_state_dict_file", never)
    root = tmp_path / "weights-copy"
    shutil.copytree(stack["root"], root)
    (root / "ext_weights" / "best_netG.pt").unlink()
    with pytest.raises(CheckpointError, match="best_netG.pt"):
        load_foley_model(root, "small_16k", configs=CONFIGS["small_16k"])
    (root / "ext_weights" / "synchformer_state_dict.pth").unlink()
    with pytest.raises(CheckpointError, match="best_netG.pt .*is missing; ext_weights/synchformer_state_dict.pth"):
        load_foley_model(root, "small_16k", configs=CONFIGS["small_16k"])  # every missing file at once
    with pytest.raises(CheckpointError, match="synchformer_state_dict.pth"):
        load_foley_model(root, "small_44k", configs=CONFIGS["small_44k"])
    (root / "weights" / "mmaudio_small_44k.pth").unlink()
    with pytest.raises(CheckpointError, match="mmaudio_small_44k.pth"):
        load_foley_model(root, "small_44k", configs=CONFIGS["small_44k"])
    shutil.rmtree(root / "ext_weights" / "DFN5B-CLIP-ViT-H-14-384")
    with pytest.raises(CheckpointError, match="DFN5B-CLIP-ViT-H-14-384 .*is missing"):
        load_foley_model(root, "small_16k", configs=CONFIGS["small_16k"])


def test_clip_beside_weights_and_as_safetensors_still_loads_and_its_config_is_optional(stack, tmp_path):
    """Every layout the CLIP loader takes passes the check before loading too: the folder beside
    weights/ (not in ext_weights/), the weights as open_clip_pytorch_model.safetensors, and no
    open_clip_config.json (the loader then takes DFN5B's sizes)."""
    import shutil

    from safetensors.torch import save_file

    from stepfoley.engine.weights import check_weights_dir

    root = tmp_path / "weights-copy"
    shutil.copytree(stack["root"], root)
    clip = root / "ext_weights" / "DFN5B-CLIP-ViT-H-14-384"
    state = torch.load(clip / "open_clip_pytorch_model.bin", weights_only=True)
    save_file({k: v.contiguous() for k, v in state.items()}, str(clip / "open_clip_pytorch_model.safetensors"))
    (clip / "open_clip_pytorch_model.bin").unlink()
    shutil.move(clip, root / "DFN5B-CLIP-ViT-H-14-384")
    model = load_foley_model(root, "small_16k", configs=CONFIGS["small_16k"])
    assert model.model_id.startswith("mmaudio-small_16k")
    (root / "DFN5B-CLIP-ViT-H-14-384" / "open_clip_config.json").unlink()  # these test weights need their sizes
    assert check_weights_dir(root, verify=False).ready("small_16k")


def test_the_base_alone_loads_whatever_controlnet_the_folder_holds(stack, tmp_path):
    """Training a ControlNet replaces the one in controlnets/: one made for another network (the
    44 kHz model's under the 16 kHz name) refused the training meant to replace it."""
    import shutil

    from stepfoley.engine.errors import CheckpointError
    from stepfoley.engine.loading import load_mmaudio_model

    root = tmp_path / "weights-copy"
    shutil.copytree(stack["root"], root)
    shutil.copy(root / "controlnets" / "small_44k.safetensors", root / "controlnets" / "small_16k.safetensors")
    with pytest.raises(CheckpointError, match="was made for another base model"):
        load_mmaudio_model(root, "small_16k", torch.device("cpu"), configs=CONFIGS["small_16k"])
    base = load_mmaudio_model(root, "small_16k", torch.device("cpu"), configs=CONFIGS["small_16k"],
                              with_controlnet=False)
    assert base.controlnet is None and base.model_id == "mmaudio-small_16k"


def test_a_damaged_clip_configuration_is_a_checkpoint_error(tmp_path):
    from stepfoley.engine.features.clip import ClipConfig

    for text in ('{"model_cfg": {"embed_dim": 10', '["a list"]', '{"model_cfg": {"vision_cfg": 3}}',
                 '{"model_cfg": {"vision_cfg": {"width": "1280"}}}', '{"model_cfg": {"quick_gelu": 1}}'):
        (tmp_path / "open_clip_config.json").write_text(text)
        with pytest.raises(CheckpointError, match="download apple/DFN5B-CLIP-ViT-H-14-384 again"):
            ClipConfig.from_open_clip_json(tmp_path / "open_clip_config.json")


@pytest.mark.parametrize("stands", ["folder", "dangling link", "pipe"])
def test_something_else_under_the_clip_configurations_name_is_refused(stack, tmp_path, stands):
    """A folder or a link to nothing there was passed over for DFN5B's sizes without a word; a pipe
    would be read forever. The check and the loader say so alike."""
    import os
    import shutil

    from stepfoley.engine.features.clip import ClipConfig
    from stepfoley.engine.weights import check_weights_dir

    root = tmp_path / "weights-copy"
    shutil.copytree(stack["root"], root)
    config = root / "ext_weights" / "DFN5B-CLIP-ViT-H-14-384" / "open_clip_config.json"
    config.unlink()
    {"folder": config.mkdir, "dangling link": lambda: config.symlink_to(tmp_path / "nowhere.json"),
     "pipe": lambda: os.mkfifo(config)}[stands]()
    with pytest.raises(CheckpointError, match="open_clip_config.json is not a file; put apple/DFN5B"):
        ClipConfig.in_folder(config.parent)
    report = check_weights_dir(root, verify=True)
    assert not report.ready("small_16k") and "open_clip_config.json is not a file" in report.text()
    with pytest.raises(CheckpointError, match="open_clip_config.json is not a file"):
        load_foley_model(root, "small_16k", configs=CONFIGS["small_16k"])


@pytest.mark.parametrize("seconds, span", [(8.0, 8.0), (0.64, 0.64), (2.24, 2.24), (2.0, 2.24), (1.0, 1.28),
                                           (4.76, 4.8), (7.99, 8.0), (2.2400001, 2.24), (2.2411, 2.56),
                                           (8.0000208, 8.0)])  # 8 s and one 48 kHz sample: the 8 s the network knows
def test_synchformer_segments_cover_a_span_on_their_grid(seconds, span):
    from stepfoley.engine.features.mmaudio_features import sync_grid_duration
    assert sync_grid_duration(seconds) == pytest.approx(span, abs=1e-9)


def test_the_motion_features_cover_exactly_the_audio_the_network_makes(stack, monkeypatch):
    """A region off Synchformer's 0.32 s grid (2 s: its segments cover 1.92 s) is sampled over
    the grid's span (2.24 s) and cut back: the network spreads the motion features over all the
    audio it makes, so picture time t stays at audio time t. Over the region's own length the
    picture at its end conditioned audio 80 ms later."""
    model = load_foley_model(stack["root"], "small_16k", configs=CONFIGS["small_16k"])
    seen = []
    original = model.net.preprocess_conditions

    def spy(clip_f, sync_f, text_f, *, latent_seq_len=None):
        seen.append((clip_f.shape[1], sync_f.shape[1], latent_seq_len))
        return original(clip_f, sync_f, text_f, latent_seq_len=latent_seq_len)

    monkeypatch.setattr(model.net, "preprocess_conditions", spy)
    track = StepSession(model, Region(stack["video"], *REGION)).next_track(TrackSettings("rain", steps=1, seed=3))
    assert_audio(track, 16_000)
    frame_s = 2 * 256 / 16_000  # a latent frame: hop 256, two mel frames per latent
    for clip_len, sync_len, latent_len in seen:
        segments = sync_len // 8
        covered = (16 + 8 * (segments - 1)) / 25
        assert covered == pytest.approx(2.24) and abs(latent_len * frame_s - covered) < frame_s
        assert clip_len == round(covered * 8)  # 18 frames over 2.24 s: the last within 10 ms of its time


def test_a_region_a_little_past_the_grid_is_made_over_it(stack, monkeypatch):
    """2.2405 s: the motion features cover 2.24 s (half a millisecond past a span is no reason
    to make 0.32 s more), with latents enough for every sample of the region."""
    model = load_foley_model(stack["root"], "small_16k", configs=CONFIGS["small_16k"])
    seen = []
    original = model.net.preprocess_conditions
    monkeypatch.setattr(model.net, "preprocess_conditions", lambda clip_f, sync_f, text_f, *, latent_seq_len=None:
                        seen.append((sync_f.shape[1], latent_seq_len)) or original(clip_f, sync_f, text_f,
                                                                                   latent_seq_len=latent_seq_len))
    track = StepSession(model, Region(stack["video"], 0.2, 2.4405)).next_track(TrackSettings("rain", steps=1, seed=3))
    assert track.samples.shape == (round(2.2405 * 16_000),) and np.isfinite(track.samples).all()
    assert set(seen) == {(6 * 8, 71)}  # 6 segments: 2.24 s; 71 latents of 32 ms: 2.272 s


@pytest.mark.parametrize("variant, samples, latents", [("small_16k", 128_000, 250), ("small_44k", 352_801, 345)])
def test_eight_seconds_and_a_48khz_sample_is_made_as_eight_seconds(stack, tmp_path, monkeypatch, variant, samples,
                                                                   latents):
    """A DAW's 8 s selection a sample long at 48 kHz: one window, with the latents and 8 s of
    features the network was trained with, not 8.32 s of them or a latent more that spreads 8 s
    of picture over 8.032 s. At 16 kHz it is 128,000 samples; at 44.1 kHz 352,801, which the
    345 latents hold (353,280 samples): it was made as two windows 21 µs apart, crossfaded."""
    from stepfoley.lab.miniworld import make_scene, write_scene

    video = write_scene(make_scene(22, duration=8.5), tmp_path, mux_audio=False)["video"]
    model = load_foley_model(stack["root"], variant, configs=CONFIGS[variant])
    seen = []
    original = model.net.preprocess_conditions
    monkeypatch.setattr(model.net, "preprocess_conditions", lambda clip_f, sync_f, text_f, *, latent_seq_len=None:
                        seen.append((clip_f.shape[1], sync_f.shape[1], latent_seq_len)) or
                        original(clip_f, sync_f, text_f, latent_seq_len=latent_seq_len))
    track = StepSession(model, Region(video, 0.2, 0.2 + 384_001 / 48_000)).next_track(
        TrackSettings("rain", steps=1, seed=3))
    assert track.samples.shape == (samples,) and seen == [(64, 192, latents)] * len(seen)
    assert track.metadata["windows"] == 1


def test_a_repair_holds_the_takes_frames_where_they_are_in_the_longer_span(stack, monkeypatch):
    """Over the 2.24 s the network makes for a 2 s region, the take's kept frames are held at
    their own times, and the 0.24 s past the region is made, not held."""
    from stepfoley.engine import session as session_module
    from stepfoley.engine.session import KnownAudio

    model = load_foley_model(stack["root"], "small_16k", configs=CONFIGS["small_16k"])
    held = []
    original = session_module.known_latent
    monkeypatch.setattr(session_module, "known_latent",
                        lambda known, keep, noise: held.append(keep[0, :, 0].bool()) or original(known, keep, noise))
    take = (0.1 * np.sin(np.arange(32_000) * 0.05)).astype(np.float32)
    keep = np.ones(32_000, bool)
    keep[12_800:19_200] = False  # 0.8-1.2 s made new
    track = StepSession(model, Region(stack["video"], *REGION)).next_variations(
        TrackSettings("rain", steps=1, seed=3), 1, known=KnownAudio(take, keep))[0]
    assert_audio(track, 16_000)
    frame_s = 2 * 256 / 16_000
    starts = np.arange(len(held[0])) * frame_s
    assert len(held[0]) * frame_s == pytest.approx(2.24, abs=frame_s)
    expected = ((starts + frame_s <= 0.8 - 0.05) | ((starts >= 1.2 + 0.05) & (starts + frame_s <= 2.0 - 0.05)))
    assert held[0].numpy().tolist() == expected.tolist()


def test_past_the_region_its_last_frame_is_held_not_the_picture_after_it(stack, monkeypatch):
    from stepfoley.engine.features import mmaudio_features

    encoder = load_foley_model(stack["root"], "small_16k", configs=CONFIGS["small_16k"]).video_encoder
    frames = []
    monkeypatch.setattr(mmaudio_features, "encode_sync_frames",
                        lambda model, f, *a, **k: frames.append(f) or torch.zeros(1, 8 * ((len(f) - 16) // 8 + 1), 32))
    encoder.encode_region(stack["video"], 0.48, 2.48)  # to the end of the picture: 50 frames, held to 56
    assert len(frames[0]) == 56
    assert all(torch.equal(frame, frames[0][49]) for frame in frames[0][50:])
    # the scene moves: held frames are not a still picture's
    assert sum(not torch.equal(frame, frames[0][49]) for frame in frames[0][:49]) > 30


def test_a_picture_region_reaches_clip_and_synchformer_as_a_crop(stack, monkeypatch):
    from stepfoley.engine import video as video_module
    from stepfoley.engine.features import mmaudio_features
    from stepfoley.engine.pipeline import PictureFocus

    model = load_foley_model(stack["root"], "small_16k", configs=CONFIGS["small_16k"])
    encoder = model.video_encoder
    plain = encoder.encode_region(stack["video"], *REGION)
    focus = PictureFocus((0.5, 0.0, 1.0, 0.5))
    seen = []
    monkeypatch.setattr(mmaudio_features, "read_regions",
                        lambda *a: seen.append(a) or video_module.read_regions(*a))
    focused = encoder.encode_region(stack["video"], *REGION, focus=focus)
    assert seen[0][-1] is focus
    for a, b in zip(plain, focused):  # CLIP's and Synchformer's features both see the crop
        assert a.shape == b.shape and not torch.allclose(a, b)


def test_without_a_controlnet_the_default_is_plain_cfg_and_a_request_without_method_runs(stack, tmp_path):
    from stepfoley.request import parse_request

    root = tmp_path / "no-controlnet"
    root.mkdir()
    for sub in ("weights", "ext_weights"):
        (root / sub).symlink_to(stack["root"] / sub)
    model = load_foley_model(root, "small_16k", configs=CONFIGS["small_16k"])
    assert model.model_id == "mmaudio-small_16k" and model.controlnet is None
    assert model.defaults.method == "independent" and "'independent' is the default" in model.note
    request = parse_request({"region": {"video": str(stack["video"]), "file_in": REGION[0], "file_out": REGION[1]},
                             "caption": "rain", "output_dir": str(tmp_path), "sample_rate": 16000},
                            model.capabilities())
    assert request.method is None  # the model's default, which it can run
    track = StepSession(model, Region(stack["video"], *REGION)).next_track(TrackSettings("rain", steps=1, seed=3))
    assert track.metadata["method_used"] == "independent"


def test_a_wrong_safetensors_copy_is_named_as_the_file_read(stack, tmp_path):
    """A copy beside the official file is read instead of it: a load that fails names the copy,
    and says to delete it (downloading the official file again would not help)."""
    import shutil

    from safetensors.torch import save_file

    root = tmp_path / "weights-copy"
    shutil.copytree(stack["root"], root)
    vae_44k = torch.load(root / "ext_weights" / "v1-44.pth", weights_only=True)
    save_file({k: v.contiguous() for k, v in vae_44k.items()}, str(root / "ext_weights" / "v1-16.safetensors"))
    with pytest.raises(CheckpointError, match=r"v1-16\.safetensors \(the \.safetensors copy read instead of "
                                              r"v1-16\.pth; if it is wrong, delete it"):
        load_foley_model(root, "small_16k", configs=CONFIGS["small_16k"])
    (root / "ext_weights" / "v1-16.safetensors").unlink()
    flow = torch.load(root / "weights" / "mmaudio_small_44k.pth", weights_only=True)
    save_file({k: v.contiguous() for k, v in flow.items()}, str(root / "weights" / "mmaudio_small_16k.safetensors"))
    with pytest.raises(CheckpointError, match=r"The file read: .*mmaudio_small_16k\.safetensors \(the \.safetensors copy"):
        load_foley_model(root, "small_16k", configs=CONFIGS["small_16k"])


def test_half_precision_files_load_as_float32_networks_with_their_values(stack, tmp_path):
    """The flow network, CLIP and Synchformer are built on the meta device and given the file's
    tensors (a full-size network is never held twice): a half-precision download must still
    come out as float32 networks holding the file's values, every tensor real, none on meta."""
    import shutil

    root = tmp_path / "weights-half"
    shutil.copytree(stack["root"], root)
    files = [root / "weights" / "mmaudio_small_16k.pth", root / "ext_weights" / "synchformer_state_dict.pth",
             root / "ext_weights" / "DFN5B-CLIP-ViT-H-14-384" / "open_clip_pytorch_model.bin"]
    halves = {}
    for path in files:
        state = torch.load(path, weights_only=True)
        halves[path.name] = {k: v.half() if v.is_floating_point() else v for k, v in state.items()}
        torch.save(halves[path.name], path)
    model = load_foley_model(root, "small_16k", configs=CONFIGS["small_16k"])
    clip, synchformer = model.video_encoder.clip, model.video_encoder.synchformer
    for network in (model.net, clip, synchformer):
        tensors = list(network.parameters()) + list(network.buffers())
        assert all(t.dtype == torch.float32 and t.device.type == "cpu" for t in tensors)
    flow = halves["mmaudio_small_16k.pth"]
    assert torch.equal(model.net.latent_std, flow["latent_std"].float())
    assert torch.equal(clip.positional_embedding, halves["open_clip_pytorch_model.bin"]["positional_embedding"].float())
    first, second = two_tracks(model, stack["video"])
    assert_audio(first, 16000)
    assert_audio(second, 16000)
