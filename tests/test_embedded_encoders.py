import math

import numpy as np
import pytest
import torch

from stepfoley.engine.embedded.codec import MelCodec, MelCodecConfig
from stepfoley.engine.embedded.encoders import EmbeddedVideoEncoder, sync_length
from stepfoley.engine.embedded.text import TEXT_SEQ_LEN, EmbeddedTextEncoder, basic_split
from stepfoley.engine.errors import CheckpointError, InvalidInputError
from stepfoley.lab.miniworld import CAPTIONS, make_scene, single_source_clip, write_scene


def frames_from_hwc(frames) -> torch.Tensor:
    """(T, H, W, 3) uint8 (the mini-world's layout) -> (T, 3, H, W) uint8, the encoder's."""
    return torch.as_tensor(frames).permute(0, 3, 1, 2).contiguous()


# --- codec -----------------------------------------------------------------------------------------

def test_codec_layout_matches_mmaudio_16k():
    codec = MelCodec()
    assert codec.sample_rate == 16000 and codec.latent_length(8.0) == 250
    latent = codec.encode(torch.zeros(2, 128000))
    assert latent.shape == (2, 250, codec.latent_dim)
    assert codec.decode(latent[:, :20]).shape == (2, 20 * 512)
    with pytest.raises(InvalidInputError):
        codec.decode(torch.zeros(1, 10, codec.latent_dim + 1))


def test_codec_silence_is_one_latent_value_and_decodes_to_silence():
    codec = MelCodec()
    latent = codec.encode(torch.zeros(1, 16000))
    assert torch.equal(latent, torch.full_like(latent, math.log(codec.config.log_offset)))
    assert float(codec.decode(latent).abs().max()) < 1e-9   # -180 dBFS: nothing a listener hears


def _eval_flux(wave: torch.Tensor) -> float:
    """Mean spectral flux of 16 kHz mono audio (S,) on the evaluation's log-mel (lab.evaluation.controls)."""
    from stepfoley.lab.evaluation.controls import log_mel_flux
    return float(log_mel_flux(wave.numpy()).mean())


@pytest.mark.parametrize("kind, most", [("rain", 1.4), ("wheel", 3.0)])
def test_the_codec_decodes_on_a_grid_finer_than_its_latent(kind, most):
    """Griffin-Lim at the latent's own hop (half the FFT) warbles: the mini-world's rain and
    spinning wheel came back with 1.6 and 3.9 times their own frame-to-frame flux. Decoded on
    the finer synthesis grid they come back with a good part of that gone."""
    from stepfoley.engine import mixing

    clip = single_source_clip(3, kind, duration=2.0)
    signal = torch.from_numpy(mixing.resample(clip.stems[:1], clip.sample_rate, 16000).astype(np.float32))
    latent_grid = MelCodec(MelCodecConfig(synthesis_hop=512))
    fine_grid = MelCodec()
    assert fine_grid.config.synthesis_hop < fine_grid.hop
    latent = fine_grid.encode(signal)
    assert torch.equal(latent, latent_grid.encode(signal))        # the decoder alone differs
    truth = _eval_flux(signal[0])
    coarse, fine = (_eval_flux(c.decode(latent)[0]) / truth for c in (latent_grid, fine_grid))
    assert fine < 0.8 * coarse and fine < most, (coarse, fine)
    assert fine_grid.decode(latent[:, :7]).shape == (1, 7 * 512)


def test_the_synthesis_grid_keeps_each_latent_frames_power_and_its_silences():
    codec = MelCodec()
    steady = torch.full((1, 6, 513), 0.25)
    torch.testing.assert_close(codec._to_synthesis_grid(steady), torch.full((1, 24, 513), 0.25))
    onset = torch.zeros(1, 6, 513)
    onset[:, 3:] = 100.0                                         # silence, then loud from latent frame 3
    fine = codec._to_synthesis_grid(onset)[0, :, 0]              # (24,) synthesis frames, 4 per latent frame
    assert float(fine[:12].abs().max()) == 0.0                   # the silent latent frames stay silent
    assert float(fine[12]) < 0.01 * float(fine[15])               # the onset is not spread before itself
    power = (fine.reshape(6, 4) ** 2).mean(dim=1)
    torch.testing.assert_close(power, onset[0, :, 0] ** 2)
    click = torch.zeros(1, 5, 513)
    click[:, 2] = 1.0                                            # one latent frame long, silence around
    fine = codec._to_synthesis_grid(click)[0, :, 0]
    torch.testing.assert_close((fine[8:12] ** 2).mean(), torch.tensor(1.0))   # its power kept
    assert float(fine[:8].abs().max()) == 0.0 and float(fine[12:].abs().max()) == 0.0


@pytest.mark.parametrize("fields", [{"synthesis_hop": 96}, {"synthesis_hop": 0}, {"nnls_iterations": -1}])
def test_an_impossible_decoder_setting_is_refused(fields):
    with pytest.raises(InvalidInputError, match="codec"):
        MelCodecConfig(**fields)


def test_weights_decode_with_this_versions_decoder_whatever_they_recorded():
    """The decoder's settings never shaped the latent: a file that recorded the first decoder's
    (30 mel-inversion updates, 32 Griffin-Lim iterations at the latent's hop) decodes as this
    version does, with its latent's own settings kept."""
    import json
    from dataclasses import asdict

    from stepfoley.engine.embedded.model import codec_config_of

    recorded = asdict(MelCodecConfig(log_offset=1e-2, nnls_iterations=30, griffin_lim_iterations=32,
                                     synthesis_hop=512))
    assert codec_config_of({"codec_config": json.dumps(recorded)}) == MelCodecConfig(log_offset=1e-2)
    del recorded["synthesis_hop"]                                 # a file from before the field
    assert codec_config_of({"codec_config": json.dumps(recorded)}) == MelCodecConfig(log_offset=1e-2)


@pytest.mark.parametrize("hop, n_fft, synthesis_hop", [(64, 256, 16), (96, 192, 24), (6, 12, 6)])
def test_weights_on_another_latent_grid_decode_on_a_synthesis_grid_that_fits_it(hop, n_fft, synthesis_hop):
    # this version's 128-sample synthesis hop divides neither 64 nor 96: such weights, which the
    # first decoder read, were refused as "a codec this version cannot build"
    import json
    from dataclasses import asdict

    from stepfoley.engine.embedded.model import codec_config_of

    recorded = asdict(MelCodecConfig(hop=hop, n_fft=n_fft, synthesis_hop=hop))
    config = codec_config_of({"codec_config": json.dumps(recorded)})
    assert (config.hop, config.n_fft, config.synthesis_hop) == (hop, n_fft, synthesis_hop)
    assert MelCodec(config).decode(torch.zeros(1, 3, config.n_mels)).shape == (1, 3 * hop)


def test_the_first_codec_latent_stays_for_weights_trained_with_it():
    first = MelCodec(MelCodecConfig(log_offset=0.0))
    assert torch.equal(first.encode(torch.zeros(1, 1600)), torch.full((1, 4, 40), math.log(1e-5)))
    t = torch.arange(16000) / 16000
    tone = 0.5 * torch.sin(2 * math.pi * 1000 * t)[None]
    old, new = first.encode(tone), MelCodec().encode(tone)
    loud = old > 0.0  # the tone's band: a thousand times the offset, where ln(mel + offset) ~ ln(mel)
    assert bool(loud.any())
    torch.testing.assert_close(new[loud], old[loud], rtol=0, atol=1.1e-3)
    quiet = old < math.log(1e-4)  # far under the offset the new latent sits at ln(offset)
    assert bool((new[quiet] - math.log(1e-3)).abs().max() < 0.1)


def test_weights_say_which_codec_they_were_trained_in(tmp_path):
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    from stepfoley.engine.embedded.model import build_embedded_model, save_embedded_weights

    model = build_embedded_model(random_weights=True)
    model.codec = MelCodec(MelCodecConfig(log_offset=1e-2))
    path = save_embedded_weights(tmp_path / "w.safetensors", model.net, model.controlnet, model.codec, metadata={})
    assert build_embedded_model(weights_path=path).codec.config == MelCodecConfig(log_offset=1e-2)
    # a file from before the codec was recorded: every such model was trained in the first latent
    with safe_open(str(path), "pt") as f:
        meta = {k: v for k, v in f.metadata().items() if k != "codec_config"}
    save_file(load_file(str(path)), str(tmp_path / "older.safetensors"), meta)
    assert build_embedded_model(weights_path=tmp_path / "older.safetensors").codec.config.log_offset == 0.0


@pytest.mark.parametrize("fields", ['{"log_offset": -0.001}', '{"log_offset": NaN}', '{"log_floor": 0}',
                                    '{"no_such_field": 1}', '[1, 2]'])
def test_a_weights_file_naming_an_impossible_codec_is_refused(fields):
    from stepfoley.engine.embedded.model import codec_config_of

    with pytest.raises(CheckpointError, match="codec"):
        codec_config_of({"codec_config": fields})


def test_the_level_anchor_is_a_recorded_guidance_default_and_reaches_the_sampler(tmp_path):
    import json

    from stepfoley.engine.embedded.model import build_embedded_model, save_embedded_weights, write_guidance_defaults
    from stepfoley.request import GuidanceDefaults

    model = build_embedded_model(random_weights=True)
    path = save_embedded_weights(tmp_path / "w.safetensors", model.net, model.controlnet, model.codec, metadata={})
    loaded = build_embedded_model(weights_path=path)
    assert loaded.defaults.level_anchor == 0.0 and loaded.level_anchor() is None  # weights from before it
    write_guidance_defaults(path, GuidanceDefaults(alpha=1.0, level_anchor=0.5), {"rule": "test"},
                            chosen="level_anchor")
    loaded = build_embedded_model(weights_path=path)
    assert loaded.defaults.level_anchor == 0.5
    assert loaded.capabilities().to_json()["defaults"]["level_anchor"] == 0.5
    # the anchor works in the normalized latent the sampler integrates: half the way, in dB
    codec, net = loaded.codec, loaded.net
    t = torch.arange(16000) / 16000
    loud = net.normalize(codec.encode(0.4 * torch.sin(2 * math.pi * 1000 * t)[None]))
    quiet = net.normalize(codec.encode(0.004 * torch.sin(2 * math.pi * 1000 * t)[None]))
    energy = lambda latent: float((codec.mel_magnitude(net.unnormalize(latent)) ** 2).sum())  # noqa: E731
    assert energy(loaded.level_anchor()(loud, quiet)) == pytest.approx(math.sqrt(energy(loud) * energy(quiet)),
                                                                        rel=1e-3)
    with pytest.raises(ValueError, match="level anchor"):
        GuidanceDefaults(level_anchor=1.5)
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file
    with safe_open(str(path), "pt") as f:
        meta = dict(f.metadata())
    assert json.loads(meta["level_anchor_provenance"]) == {"rule": "test"}
    meta["guidance_defaults"] = json.dumps({"alpha": 1.0, "level_anchor": -1})
    save_file(load_file(str(path)), str(tmp_path / "bad.safetensors"), meta)
    with pytest.raises(CheckpointError, match="guidance defaults"):
        build_embedded_model(weights_path=tmp_path / "bad.safetensors")


@pytest.mark.parametrize("log_offset", [1e-3, 0.0])
def test_match_level_moves_only_the_level_and_as_far_as_asked(log_offset):
    codec = MelCodec(MelCodecConfig(log_offset=log_offset))
    t = torch.arange(16000) / 16000
    tones = torch.stack([0.05 * torch.sin(2 * math.pi * 440 * t), 0.4 * torch.sin(2 * math.pi * 2000 * t)])
    loud, quiet = codec.encode(tones), codec.encode(0.1 * tones.flip(0))
    energy = lambda latent: (codec.mel_magnitude(latent) ** 2).sum(dim=(1, 2))  # noqa: E731
    moved = codec.match_level(loud, quiet, 1.0)
    torch.testing.assert_close(energy(moved), energy(quiet), rtol=1e-4, atol=0)
    # the balance of bands and frames is the take's own: one gain per item
    mel, moved_mel = codec.mel_magnitude(loud), codec.mel_magnitude(moved)
    for row in range(2):
        band = mel[row] > 1e-2
        ratio = moved_mel[row][band] / mel[row][band]
        torch.testing.assert_close(ratio, torch.full_like(ratio, float(ratio.mean())), rtol=1e-4, atol=0)
    # half the way in dB
    half = codec.match_level(loud, quiet, 0.5)
    torch.testing.assert_close(energy(half), (energy(loud) * energy(quiet)).sqrt(), rtol=1e-4, atol=0)
    assert torch.equal(codec.match_level(loud, quiet, 0.0), loud)
    if log_offset > 0:  # silence has no level to move, and moves nothing (the first latent has no silence)
        silence = codec.encode(torch.zeros(2, 16000))
        assert torch.equal(codec.match_level(silence, quiet, 1.0), silence)
        torch.testing.assert_close(codec.match_level(loud, silence, 1.0), loud, rtol=0, atol=1e-5)  # exp/log rounding


def test_codec_puts_a_tone_in_its_mel_band():
    codec = MelCodec()
    t = torch.arange(16000) / 16000
    latent = codec.encode(0.5 * torch.sin(2 * math.pi * 1500 * t)[None])
    band = int(latent[0].mean(0).argmax())
    centres = (codec.filters * torch.linspace(0, 8000, codec.filters.shape[1])).sum(1) / codec.filters.sum(1)
    assert abs(float(centres[band]) - 1500) < 0.1 * 1500


def test_codec_round_trip_keeps_envelope_and_peaks():
    codec = MelCodec()
    scenes = [make_scene(4), make_scene(1, kinds=["lamp", "pendulum"])]
    wave = torch.from_numpy(np.stack([s.mixture for s in scenes]))
    decoded = codec.decode(codec.encode(wave))
    assert decoded.shape == wave.shape
    latent_head = codec.encode(wave[:1, :16000])
    assert torch.equal(codec.decode(latent_head), codec.decode(latent_head))     # deterministic
    freqs = np.fft.rfftfreq(wave.shape[1], 1 / 16000)
    for original, rebuilt in zip(wave.numpy(), decoded.numpy()):
        energy = lambda w: (w.reshape(-1, 512) ** 2).mean(1)  # noqa: E731
        assert np.corrcoef(energy(original), energy(rebuilt))[0, 1] > 0.9
        peak, rebuilt_peak = (freqs[np.argmax(np.abs(np.fft.rfft(w)))] for w in (original, rebuilt))
        # Within one mel band: the latent keeps band energies, not exact frequencies.
        assert abs(rebuilt_peak - peak) < max(70.0, 0.08 * peak), (peak, rebuilt_peak)


def test_codec_decodes_an_overloaded_latent_beyond_full_scale_and_each_row_alike_in_any_batch():
    codec = MelCodec()
    t = torch.arange(16000) / 16000
    loud = codec.encode(0.5 * torch.sin(2 * math.pi * 700 * t)[None]) + 3.0  # +26 dB: beyond anything real
    quiet = codec.encode(0.01 * torch.sin(2 * math.pi * 300 * t)[None])
    alone = codec.decode(loud)
    assert alone.abs().max() > 2.0  # no clamp: the overload stays measurable
    batch = codec.decode(torch.cat([quiet, loud]))
    torch.testing.assert_close(batch[1:], alone, atol=1e-5, rtol=1e-5)


# --- video features ----------------------------------------------------------------------------------

def test_video_features_have_mmaudio_lengths_and_scale():
    encoder = EmbeddedVideoEncoder()
    scene = make_scene(8)
    clip_f, sync_f = encoder.encode_frames(frames_from_hwc(scene.frames))
    assert clip_f.shape == (1, 64, encoder.clip_dim) and sync_f.shape == (1, 192, encoder.sync_dim)
    again = encoder.encode_frames(frames_from_hwc(scene.frames))
    assert torch.equal(clip_f, again[0]) and torch.equal(sync_f, again[1])
    for features in (clip_f, sync_f):
        rms = features.pow(2).mean().sqrt()
        assert 0.2 < rms < 3 and features.abs().max() < 10
    short = make_scene(8, duration=5.0)
    clip_s, sync_s = encoder.encode_frames(frames_from_hwc(short.frames))
    assert clip_s.shape[1] == 40 and sync_s.shape[1] == sync_length(125) == 112
    with pytest.raises(InvalidInputError):
        encoder.encode_frames(frames_from_hwc(short.frames[:10]))


def test_motion_features_peak_when_the_lamp_switches():
    clip = single_source_clip(4, "lamp")
    _, sync_f = EmbeddedVideoEncoder().encode_frames(frames_from_hwc(clip.frames))
    energy = sync_f[0, :, 60].numpy()                    # global |frame difference|
    step_of = lambda frame: int(round((frame + 0.5) * 192 / 200 - 0.5))  # noqa: E731
    switches = {e.start_frame for e in clip.events} | {e.end_frame for e in clip.events if e.end_frame < 200}
    switches.discard(0)
    at_switch = [energy[step_of(f)] for f in switches]
    steady = [energy[k] for k in range(192) if all(abs(k - step_of(f)) > 2 for f in switches)]
    assert min(at_switch) > 5 * max(steady) + 1e-6


@pytest.mark.parametrize("n_frames", [119, 77, 200])
def test_motion_lands_at_its_own_time_whatever_the_regions_length(n_frames):
    """The network spreads the motion steps over the whole audio: a flash in a 4.76 s region (119
    frames, of which MMAudio's windows cover 112) came out up to 0.26 s late toward its end, since
    only the covered frames were sampled. Each flash now lands within a latent frame of its time
    (an 8 s window, 200 frames, all the model was trained on, is covered whole either way)."""
    from stepfoley.engine.mmaudio import sync_upsample_index

    flashes = list(range(6, n_frames - 2, 12))
    frames = torch.full((n_frames, 3, 64, 64), 40, dtype=torch.uint8)
    frames[flashes] = 250
    _, sync_f = EmbeddedVideoEncoder().encode_frames(frames)
    seconds = n_frames / 25
    latents = math.ceil(seconds * 16000 / 512)  # the embedded codec's grid: 32 ms a latent
    energy = sync_f[0, sync_upsample_index(sync_f.shape[1], latents), 60].numpy()  # (latents,) |frame difference|
    for flash in flashes:
        near = slice(max(0, round(flash / 25 * latents / seconds) - 4), round(flash / 25 * latents / seconds) + 5)
        peak = near.start + int(np.argmax(energy[near]))
        assert abs((peak + 0.5) * seconds / latents - flash / 25) <= 0.032 + 0.04 + 1e-9, (flash, peak)


def test_video_features_from_a_real_file_match_the_frames(tmp_path):
    scene = make_scene(13, duration=3.0)
    video = write_scene(scene, tmp_path / "s", mux_audio=False)["video"]
    encoder = EmbeddedVideoEncoder()
    from_file = encoder.encode_region(video, 1.0, 3.0)
    from_frames = encoder.encode_frames(frames_from_hwc(scene.frames[25:75]))
    for a, b in zip(from_file, from_frames):
        assert a.shape == b.shape
        assert np.corrcoef(a.flatten().numpy(), b.flatten().numpy())[0, 1] > 0.9


# --- text --------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def text_encoder():
    return EmbeddedTextEncoder()


def test_basic_split_lowercases_strips_accents_and_splits_punctuation():
    assert basic_split("Café, NAÏVE  bell!") == ["cafe", ",", "naive", "bell", "!"]


def test_text_features_layout_and_padding(text_encoder):
    captions = ["a bell rings", "footsteps on gravel " * 40]
    features = text_encoder.encode(captions)
    assert features.shape == (2, TEXT_SEQ_LEN, 384)
    ids, mask = text_encoder.tokenize(captions)
    assert ids[0, 0] == text_encoder.tokenizer.cls_id and ids[1, -1] == text_encoder.tokenizer.sep_id
    real = int(mask[0].sum())
    assert real == len(text_encoder.tokenizer.encode("a bell rings")) and mask[1].all()
    norms = features.norm(dim=-1)
    torch.testing.assert_close(norms[0, :real], torch.full((real,), math.sqrt(384)))
    assert torch.all(features[0, real:] == 0)
    pieces = text_encoder.tokenizer.word_ids("thunderously")
    vocab = {i: t for t, i in text_encoder.tokenizer.vocab.items()}
    assert "".join(vocab[i].removeprefix("##") for i in pieces) == "thunderously"


def test_text_embeddings_put_paraphrases_together(text_encoder):
    kinds = sorted(CAPTIONS)
    captions = [c for k in kinds for c in CAPTIONS[k]]
    owner = np.array([k for k in kinds for _ in CAPTIONS[k]])
    vectors = text_encoder.sentence_embedding(captions)
    similarity = (vectors @ vectors.T).numpy()
    for kind in kinds:
        mine = owner == kind
        within = similarity[np.ix_(mine, mine)][~np.eye(mine.sum(), dtype=bool)].mean()
        between = similarity[np.ix_(mine, ~mine)].mean()
        assert within > between + 0.1, kind
    pair = text_encoder.sentence_embedding(["a dog barks", "a barking dog", "a car engine idling"])
    assert float(pair[0] @ pair[1]) > float(pair[0] @ pair[2]) + 0.3


def test_text_encoder_reports_missing_files(tmp_path):
    with pytest.raises(CheckpointError):
        EmbeddedTextEncoder(model_dir=tmp_path)


def test_the_codec_uses_the_one_slaney_filterbank_rounded_as_the_model_was_trained():
    """One filterbank (engine.codec.mel) for MMAudio's converters and this codec; the embedded
    model was trained with filters computed in float64 and rounded once, which differ from
    librosa's float32 ramps in a few hundred entries by 1e-9, enough to move a Griffin-Lim decode
    by 2.6e-4."""
    from stepfoley.engine.codec.mel import slaney_mel_filterbank

    codec = MelCodec()
    c = codec.config
    trained = slaney_mel_filterbank(c.sample_rate, c.n_fft, c.n_mels, c.f_min, c.f_max, librosa_rounding=False)
    librosa = slaney_mel_filterbank(c.sample_rate, c.n_fft, c.n_mels, c.f_min, c.f_max)
    assert torch.equal(codec.filters, trained)
    assert not torch.equal(trained, librosa) and torch.allclose(trained, librosa, rtol=0, atol=1e-8)


def test_a_latent_driven_far_by_strong_guidance_stays_finite_through_the_codec():
    """α 100 (inside the published bounds) drove a latent to about 1,200, whose exponential is
    infinite in float32: match_level and decode made the track NaN and the job failed. Such a
    latent now stands for MAX_LATENT's magnitude, and latents in the model's range are as before."""
    from stepfoley.engine.embedded.codec import MAX_LATENT

    codec = MelCodec()
    wave = 0.1 * torch.randn(1, 16000, generator=torch.Generator().manual_seed(0))
    latent = codec.encode(wave)                                               # (1, N, 40)
    wild = latent.clone()
    wild[0, 5, 3] = 1217.8
    assert torch.isfinite(codec.match_level(wild, latent, 0.75)).all()
    assert torch.isfinite(codec.decode(wild)).all()
    assert torch.equal(codec.mel_magnitude(wild)[0, 5, 3], torch.exp(torch.tensor(MAX_LATENT)) - 1e-3)
    ordinary = latent.clamp(max=8.4)  # α 4.5's largest latents, measured: untouched
    assert torch.equal(codec.mel_magnitude(ordinary), torch.clamp(torch.exp(ordinary) - 1e-3, min=0.0))


def test_the_embedded_encoders_frame_grid_is_mmaudios():
    """encoders.py writes MMAudio's grid again rather than import PyAV with engine.video."""
    from stepfoley.engine import video
    from stepfoley.engine.embedded import encoders
    from stepfoley.engine.mmaudio.config import SYNC_FRAMES_PER_SEGMENT

    assert (encoders.CLIP_FPS, encoders.SYNC_FPS, encoders.SEGMENT_FRAMES, encoders.SEGMENT_STRIDE,
            encoders.TOKENS_PER_SEGMENT) == (video.CLIP_FPS, video.SYNC_FPS, video.SYNC_SEGMENT_FRAMES,
                                             video.SYNC_SEGMENT_STEP, SYNC_FRAMES_PER_SEGMENT)
