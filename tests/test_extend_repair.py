"""Extend and repair (protocol 2, training-free): the known part of the latent held at its noise
level at every step, the take kept sample for sample, crossfades only on the new side, NAG still
negating the earlier layers. The random-weight embedded model; the sampler on a toy flow."""

import json
import math

import numpy as np
import pytest
import soundfile as sf
import torch

from stepfoley.engine import audio_io, mixing
from stepfoley.engine.input_files import check_request_paths
from stepfoley.engine.sampler import euler_sample, initial_noise, known_latent, time_grid
from stepfoley.engine.service import FoleyService
from stepfoley.engine.session import (KnownAudio, channel_balance, finish_new_part, held_frames, kept_power,
                                      limit_new_part, seam_sides, splice)
from stepfoley.request import RequestError, parse_request
from test_bridge_kit import make_request


@pytest.fixture(scope="module")
def tiny():
    from stepfoley.engine.embedded.model import build_embedded_model
    return build_embedded_model(random_weights=True)


@pytest.fixture(scope="module")
def scene_video(tmp_path_factory):
    from stepfoley.lab.miniworld import make_scene, write_scene
    return write_scene(make_scene(20_000_003, n_sources=2), tmp_path_factory.mktemp("scene"))["video"]


def test_the_known_latent_is_held_at_its_noise_level_and_is_exact_at_the_end():
    steps, seen = 4, []
    noise = initial_noise([3], 6, 2)
    known = torch.full((1, 6, 2), 0.7)
    keep = torch.tensor([1.0, 1.0, 0.0, 0.0, 0.0, 1.0])[None, :, None]
    hold = known_latent(known, keep, noise)

    def velocity(t, x):  # a flow that would carry everything to -1
        seen.append((float(t), x.clone()))
        return (-1.0 - x) / (1.0 - t)

    out = euler_sample(velocity, noise, time_grid(steps), constrain=hold)
    for t, x in seen:  # before each step, the held frames sit on the straight path to the known latent
        np.testing.assert_allclose(x[0, [0, 1, 5]], ((1 - t) * noise + t * known)[0, [0, 1, 5]], atol=1e-6)
    assert torch.equal(out[0, [0, 1, 5]], known[0, [0, 1, 5]])
    np.testing.assert_allclose(out[0, 2:5], -1.0, atol=1e-5)  # the rest follows the flow


def test_frames_next_to_a_seam_are_sampled_not_held():
    keep = np.ones(100, bool)
    keep[40:60] = False
    assert held_frames(keep, 10, 0).tolist() == [1, 1, 1, 1, 0, 0, 1, 1, 1, 1]
    assert held_frames(keep, 10, 5).tolist() == [1, 1, 1, 0, 0, 0, 0, 1, 1, 1]


def test_splice_keeps_the_take_and_fades_only_on_the_new_side():
    take = np.random.default_rng(0).standard_normal((2, 1000)).astype(np.float32)
    new = np.full((1, 1000), 0.25, np.float32)
    keep = np.ones(1000, bool)
    keep[400:600] = False
    out = splice(take, new, keep, seam=50)
    assert np.array_equal(out[:, keep], take[:, keep])
    assert np.array_equal(out[:, 450:550], np.broadcast_to(new, (2, 1000))[:, 450:550])
    assert not np.array_equal(out[:, 400:450], take[:, 400:450]) and not np.allclose(out[:, 400:450], 0.25)
    extend = np.arange(1000) < 700  # an extension fades from the take's own samples past the seam
    constant = splice(np.full((1, 1000), 0.5, np.float32), np.full((1, 1000), 0.5, np.float32), extend, 50)
    np.testing.assert_allclose(constant, 0.5, atol=1e-6)  # equal gain: the weights sum to one
    # extending from the take's very end: the fade starts from the take carried on past it
    keep_start = np.arange(1000) < 700
    extended = splice(np.pad(take[:, :700], ((0, 0), (0, 300))), new, keep_start, 50, take_length=700)
    assert np.array_equal(extended[:, :700], take[:, :700]) and np.all(extended[:, 750:] == 0.25)
    assert not np.allclose(extended[:, 700:750], 0.25)


def test_a_click_at_the_edge_of_a_repaired_span_is_gone():
    """Repairing a click is what a span inside a take is for. Each seam used to fade from the
    take's own samples inside the span, so a click within the fade's 50 ms of either edge stayed
    at nearly its level (0.78 of 0.80, 5 ms in); the fades now start from the kept audio carried
    into the span by prediction, from before it and, backwards, from after it."""
    rate = 48000
    rng = np.random.default_rng(7)
    take = (0.01 * rng.standard_normal((2, 2 * rate))).astype(np.float32)
    a, b = int(0.5 * rate), int(0.7 * rate)
    for at in (a + 240, (a + b) // 2, b - 240):             # 5 ms inside each edge, and the middle
        take[:, at:at + 48] = 0.8
    new = (0.01 * rng.standard_normal((1, 2 * rate))).astype(np.float32)
    keep = np.ones(2 * rate, bool)
    keep[a:b] = False
    stem = splice(take, new, keep, int(0.05 * rate))
    assert np.abs(stem[:, a:b]).max() < 0.1
    assert np.array_equal(stem[:, keep], take[:, keep])


def test_a_click_at_the_start_of_a_span_that_runs_to_the_stems_end_is_gone():
    # "Regenerate time selection inside selected item" up to the item's end, or an extension from
    # inside the take: the span was taken for an extension, faded in from its own samples, and a
    # click 5 ms into it stayed at 0.78 of 0.80
    rate = 48000
    rng = np.random.default_rng(8)
    take = (0.01 * rng.standard_normal((2, 2 * rate))).astype(np.float32)
    a = int(1.5 * rate)
    take[:, a + 240:a + 288] = 0.8
    new = (0.01 * rng.standard_normal((1, 2 * rate))).astype(np.float32)
    keep = np.arange(2 * rate) < a
    for take_length in (None, 2 * rate - 40, a + 100):       # the take reaching the stem's end, or not quite
        stem = splice(take, new, keep, int(0.05 * rate), take_length)
        assert np.abs(stem[:, a:]).max() < 0.1, take_length
        assert np.array_equal(stem[:, keep], take[:, keep])


def test_an_extension_from_inside_a_take_crossfades_from_its_own_audio_unless_it_clicks():
    # as an editor's crossfade: the take's own samples past the seam fade into the new audio;
    # a click there (a moderate one in a noisy take: 0.35 in noise of 0.05 RMS) is not faded back in
    rate = 48000
    rng = np.random.default_rng(12)
    take = (0.05 * rng.standard_normal((1, 2 * rate))).astype(np.float32)
    new = (0.05 * rng.standard_normal((1, 2 * rate))).astype(np.float32)
    a, seam = int(1.5 * rate), int(0.05 * rate)
    keep = np.arange(2 * rate) < a
    stem = splice(take, new, keep, seam)
    w = np.sin(0.5 * np.pi * np.arange(1, seam + 1) / (seam + 1)) ** 2  # the equal-gain fade's rise
    np.testing.assert_allclose(stem[0, a:a + seam], (1 - w) * take[0, a:a + seam] + w * new[0, a:a + seam],
                               atol=1e-6)
    take[:, a + 240:a + 288] = 0.35
    assert np.abs(splice(take, new, keep, seam)[:, a:a + seam]).max() < 0.3


def test_a_repair_of_a_take_a_little_short_of_the_stem_carries_its_end_on_not_to_zero():
    # a take 40 samples short of the stem (within the request's millisecond): a repair cut its
    # end to digital zero, a click at the item's end
    rate = 48000
    t = np.arange(8 * rate) / rate
    take = (0.3 * np.sin(2 * np.pi * 110 * t)).astype(np.float32)[None]
    take[:, -40:] = 0.0
    keep = np.ones(8 * rate, bool)
    keep[3 * rate:4 * rate] = False
    stem = splice(take, np.zeros((1, 8 * rate), np.float32), keep, int(0.05 * rate), take_length=8 * rate - 40)
    assert np.array_equal(stem[:, :8 * rate - 40][:, keep[:-40]], take[:, :8 * rate - 40][:, keep[:-40]])
    np.testing.assert_allclose(stem[0, -40:], 0.3 * np.sin(2 * np.pi * 110 * t[-40:]), atol=0.01)


def test_a_repair_of_a_take_with_an_offset_holds_it_through_the_seams():
    """The seams' fades start from the take carried into the span by prediction; an offset alone
    drives no prediction error, and the carried offset decayed: a dip of a fifth of it at each
    seam. The offset is now taken out before predicting and put back after."""
    take = np.full((1, 48000), 0.05, np.float32)
    keep = np.ones(48000, bool)
    keep[20000:30000] = False
    stem = splice(take, np.full((1, 48000), 0.05, np.float32), keep, 2400)
    np.testing.assert_allclose(stem, 0.05, atol=1e-6)


def test_a_take_extended_from_its_very_end_carries_on_into_the_new_audio_without_a_click():
    # a 120 Hz hum, 3 s at 48 kHz, extended by new hum of another phase: cut at the take's last
    # sample, the stem jumped 0.16 in one sample, ten times the hum's largest step
    rate, hum_hz = 48000, 120.25
    t = np.arange(6 * rate) / rate
    take = (0.3 * np.sin(2 * np.pi * hum_hz * t + 0.4)).astype(np.float32)[None]
    take[:, 3 * rate:] = 0.0
    new = (0.3 * np.sin(2 * np.pi * hum_hz * t + 2.5)).astype(np.float32)[None]
    keep = np.arange(6 * rate) < 3 * rate
    stem = splice(take, new, keep, int(0.05 * rate), take_length=3 * rate)
    steps = np.abs(np.diff(stem[0]))
    hum_step = 0.3 * 2 * np.pi * hum_hz / rate
    assert steps.max() < 1.5 * hum_step
    assert np.array_equal(stem[:, :3 * rate], take[:, :3 * rate])
    # noise carries on as noise of its level: no dip into the fade
    noise = (0.1 * np.random.default_rng(4).standard_normal((1, 6 * rate))).astype(np.float32)
    noise[:, 3 * rate:] = 0.0
    other = (0.1 * np.random.default_rng(5).standard_normal((1, 6 * rate))).astype(np.float32)
    stem = splice(noise, other, keep, int(0.05 * rate), take_length=3 * rate)
    first_ms = stem[0, 3 * rate: 3 * rate + rate // 200]
    assert np.sqrt(np.mean(first_ms ** 2)) > 0.07


def test_an_over_in_the_discarded_reproduction_leaves_the_new_part_alone():
    # the model's audio over 3 s at 16 kHz; the take is kept until 2 s. An over at 0.5 s lies in
    # audio the splice throws away: the limiter must not act on the new part because of it.
    rng = np.random.default_rng(3)
    audio = (0.05 * rng.standard_normal(48000)).astype(np.float32)
    keep = np.arange(48000) < 32000
    known = KnownAudio(audio.copy(), keep)
    spiked = audio.copy()
    spiked[8000] = 1.5
    clean, _ = finish_new_part(audio, known, 16000)
    hot, _ = finish_new_part(spiked, known, 16000)
    assert np.array_equal(hot[:, ~keep], clean[:, ~keep])


def test_the_new_part_is_matched_to_the_takes_channels_not_their_downmix():
    # two takes with the same downmix, one of them wide: the wide one is louder in each channel
    rng = np.random.default_rng(4)
    mid, side = (0.05 * rng.standard_normal((2, 48000))).astype(np.float32)
    keep = np.arange(48000) < 32000
    gains = []
    for channels in (np.stack([mid, mid]), np.stack([mid + side, mid - side])):
        known = KnownAudio(channels.mean(axis=0), keep, power=(channels ** 2).mean(axis=0))
        gains.append(finish_new_part(mid.copy(), known, 16000)[1]["level_match_gain_db"])
    assert gains[0] == pytest.approx(0.0, abs=0.05)
    assert gains[1] - gains[0] == pytest.approx(10 * np.log10(2.0), abs=0.2)  # side as loud as mid: +3 dB


def _request(video, out, take, regenerate, **extra):
    return {"protocol": 2, "region": {"video": str(video), "file_in": 1.0, "file_out": 3.0},
            "caption": "rain falling", "seed": 4, "steps": 2, "output_dir": str(out), "sample_rate": 48000,
            "format": "wav32f", "take": str(take), "regenerate": regenerate, **extra}


def _serve(service, request):
    return service(check_request_paths(parse_request(request, service.capabilities())))


@pytest.mark.parametrize("regenerate, take_seconds", [([0.8, 1.3], 2.0), ([1.2, 2.0], 1.2)], ids=["repair", "extend"])
def test_the_kept_audio_comes_back_sample_for_sample(tiny, scene_video, tmp_path, regenerate, take_seconds):
    rng = np.random.default_rng(1)
    take = (0.1 * rng.standard_normal((int(take_seconds * 48000), 2))).astype(np.float32)  # stereo, at the stem's rate
    sf.write(tmp_path / "take.wav", take, 48000, subtype="FLOAT")
    result = _serve(FoleyService(tiny), _request(scene_video, tmp_path, tmp_path / "take.wav", regenerate))
    [stem] = result["stems"]
    out, rate = sf.read(stem["stem_path"], dtype="float32")
    assert rate == 48000 and out.shape == (96000, 2)
    a, b = (round(x * 48000) for x in regenerate)
    kept = np.ones(96000, bool)
    kept[a:b] = False
    assert np.abs(out[kept] - take[kept[:len(take)]] if len(take) == 96000 else out[:a] - take[:a]).max() == 0
    new = out[a + 2400:b - 2400]  # past the seams' crossfades
    assert np.abs(new).max() > 1e-3 and not np.allclose(new, take[a + 2400:b - 2400] if len(take) >= b else 0)
    meta = stem["metadata"]
    assert meta["regenerate"] == regenerate and meta["kept_untouched"] and meta["channels"] == 2
    assert meta["new_part_seconds"] == pytest.approx(regenerate[1] - regenerate[0], abs=1e-3)
    # the stem's own loudness, as for any stem (the part made new has its own: new_part_lufs)
    assert meta["lufs"] == pytest.approx(mixing.integrated_loudness(out.T, 48000), abs=0.01)
    # in the stem's channels: the model's mono part, measured before it went into both, read 3 dB low
    assert meta["new_part_lufs"] == pytest.approx(mixing.integrated_loudness(out[~kept].T, 48000), abs=0.01)
    assert json.loads(json.dumps(meta))  # goes on the wire


def test_a_repair_keeps_the_takes_balance_between_its_channels(tiny, scene_video, tmp_path):
    """The model makes mono: a take panned hard left, or a 5.1 take with sound in its centre only,
    was repaired with the same audio in every channel (the surrounds and the LFE included). The
    new part now gets each channel's share of the take's power next to the seams."""
    rng = np.random.default_rng(8)
    for name, loud in (("left.wav", [1.0, 0.0]), ("centre.wav", [0.0, 0.0, 1.0, 0.0, 0.0, 0.0])):
        take = (0.1 * rng.standard_normal((96000, 1)) * np.array(loud)).astype(np.float32)
        sf.write(tmp_path / name, take, 48000, subtype="FLOAT")
        [stem] = _serve(FoleyService(tiny), _request(scene_video, tmp_path, tmp_path / name, [0.8, 1.3]))["stems"]
        out, _ = sf.read(stem["stem_path"], dtype="float32")
        new = out[int(0.8 * 48000) + 2400:int(1.3 * 48000) - 2400]               # past the crossfades
        assert np.abs(new[:, np.array(loud) == 0]).max() == 0, name               # silent channels stay so
        assert np.sqrt(np.mean(new[:, np.argmax(loud)] ** 2)) > 1e-3, name


def test_an_extension_from_the_takes_end_keeps_the_balance_next_to_it(tiny, scene_video, tmp_path):
    # right only for 3 s, then left only for 2 s, extended from its last sample: the seam at the
    # take's end did not count, and the new part took the whole take's balance, louder right
    rng = np.random.default_rng(9)
    take = np.zeros((5 * 48000, 2), np.float32)
    take[:3 * 48000, 1] = 0.1 * rng.standard_normal(3 * 48000)
    take[3 * 48000:, 0] = 0.1 * rng.standard_normal(2 * 48000)
    sf.write(tmp_path / "take.wav", take, 48000, subtype="FLOAT")
    request = _request(scene_video, tmp_path, tmp_path / "take.wav", [5.0, 8.0])
    request["region"].update(file_in=0.0, file_out=8.0)
    [stem] = _serve(FoleyService(tiny), request)["stems"]
    out, _ = sf.read(stem["stem_path"], dtype="float32")
    left, right = np.sqrt(np.mean(out[5 * 48000 + 2400:] ** 2, axis=0))
    assert left > 10 * right


def test_a_repair_inside_a_pause_keeps_the_balance_of_the_take_as_a_whole():
    """Silent within 2 s of both seams (a pause in a take panned left): the balance came out even,
    the new part centred; it is now the kept take's as a whole, as its level is."""
    rate = 16000
    take = np.zeros((2, 20 * rate), np.float32)
    take[0] = 0.1 * np.random.default_rng(10).standard_normal(20 * rate)
    take[0, 5 * rate:15 * rate] = 0.0
    keep = np.ones(20 * rate, bool)
    keep[9 * rate:11 * rate] = False
    sounding = take[0] != 0
    take[0, sounding] -= take[0, keep].sum(dtype=np.float64) / sounding.sum()  # no offset: the pause is silent
    np.testing.assert_allclose(channel_balance(take, keep, rate)[:, 0], [np.sqrt(2), 0.0], rtol=1e-5)


def test_takes_of_a_repair_are_ranked_as_their_stems_sound(tiny, scene_video, tmp_path, monkeypatch):
    """The ranking judged the model's audio over the whole region, whose copy of the kept part
    the splice throws away (up to 0.77 from the take there): it now judges the take where kept."""
    import stepfoley.engine.service as service_module

    judged = []
    real = service_module.rank_takes
    monkeypatch.setattr(service_module, "rank_takes", lambda takes, *a, **k: judged.extend(takes) or real(takes, *a, **k))
    take = (0.1 * np.random.default_rng(3).standard_normal(96000)).astype(np.float32)
    sf.write(tmp_path / "take.wav", take, 48000, subtype="FLOAT")
    stems = _serve(FoleyService(tiny), _request(scene_video, tmp_path, tmp_path / "take.wav", [0.8, 1.3],
                                                variations=2))["stems"]
    assert len(stems) == 2 and len(judged) == 2
    heard = mixing.resample(take[None], 48000, tiny.sample_rate)[0]               # the take at the model's rate
    rate = tiny.sample_rate
    for audio in judged:
        assert len(audio) == 2 * rate
        np.testing.assert_array_equal(audio[:int(0.8 * rate)], heard[:int(0.8 * rate)])
        np.testing.assert_array_equal(audio[int(1.3 * rate):], heard[int(1.3 * rate):2 * rate])


@pytest.mark.parametrize("channels", [6, 8], ids=["5.1", "7.1"])
def test_a_surround_take_is_extended_with_every_channel(tiny, scene_video, tmp_path, channels):
    """A 5.1 or 7.1 take: the stem keeps every channel, and its metadata gives its loudness where
    BS.1770 weighs the layout (5.1, its LFE left out) and says it is not measured for 7.1, instead
    of failing the finished job."""
    take = (0.1 * np.random.default_rng(2).standard_normal((72000, channels))).astype(np.float32)
    sf.write(tmp_path / "surround.wav", take, 48000, subtype="PCM_24")
    [stem] = _serve(FoleyService(tiny), _request(scene_video, tmp_path, tmp_path / "surround.wav", [1.5, 2.0],
                                                 format="wav24"))["stems"]
    out, _ = sf.read(stem["stem_path"], dtype="float32")
    assert out.shape == (96000, channels) and np.array_equal(out[:72000], sf.read(tmp_path / "surround.wav",
                                                                                    dtype="float32")[0])
    lufs = stem["metadata"]["lufs"]
    assert (lufs is None) == (channels == 8) and stem["metadata"]["channels"] == channels
    if channels == 6:
        assert lufs == pytest.approx(mixing.integrated_loudness(out.T, 48000))


def test_a_silent_stereo_take_is_extended_at_a_stems_loudness(tiny, scene_video, tmp_path):
    """The mono new part at a stem's loudness, shared evenly between the channels: at that
    level in each of them the stem measured 3 dB over it."""
    sf.write(tmp_path / "silent.wav", np.zeros((48000, 2), np.float32), 48000, subtype="FLOAT")
    [stem] = _serve(FoleyService(tiny), _request(scene_video, tmp_path, tmp_path / "silent.wav", [1.0, 2.0]))["stems"]
    out, rate = sf.read(stem["stem_path"], dtype="float32")
    assert np.array_equal(out[:, 0], out[:, 1]) and not out[:48000].any()
    # the new part alone: the 400 ms blocks across the seam, part silence, pull the whole stem's
    # measure down by as much as the new part's first 400 ms are loud
    assert mixing.integrated_loudness(out[rate:].T, rate) == pytest.approx(mixing.STEM_LUFS, abs=0.5)


@pytest.mark.parametrize("subtype, level, stem_format, untouched", [
    ("PCM_24", 0.1, "wav24", True), ("FLOAT", 0.1, "wav32f", True), ("FLOAT", 0.5, "wav24", False),
    ("PCM_32", 0.1, "wav32f", False)], ids=["pcm24-wav24", "float-wav32f", "float-overs-wav24", "pcm32-wav32f"])
def test_kept_untouched_says_whether_the_file_holds_the_take_exactly(tiny, scene_video, tmp_path, subtype, level,
                                                                     stem_format, untouched):
    take = (level * np.random.default_rng(5).standard_normal(96000)).astype(np.float32)
    path = tmp_path / "take.wav"
    sf.write(path, np.clip(take, -1, 1) if subtype != "FLOAT" else take, 48000, subtype=subtype)
    request = _request(scene_video, tmp_path, path, [1.5, 2.0], format=stem_format)
    [stem] = _serve(FoleyService(tiny), request)["stems"]
    assert stem["metadata"]["kept_untouched"] is untouched
    written = sf.read(stem["stem_path"], dtype="float32")[0][:72000]
    assert np.array_equal(written, sf.read(path, dtype="float32")[0][:72000]) is (untouched or subtype == "PCM_32")
    # the levels are the written file's: a float take with overs measured as if unclipped
    # (floats scaled to 24-bit integers: +128.8 LUFS said, -0.9 written)
    whole = sf.read(stem["stem_path"], dtype="float32")[0]
    assert stem["metadata"]["lufs"] == pytest.approx(mixing.integrated_loudness(whole, 48000), abs=0.01)
    clipped = stem["metadata"]["format_clipped_fraction"]
    # the kept 1.5 s and the seam's fade from the take's own samples; the new part is limited
    assert (clipped > 0) is (stem_format == "wav24" and level > 0.3) and clipped == pytest.approx(
        float((np.abs(take[:72000]) > 1).sum()) / 96000, rel=0.05)


def test_nag_still_negates_the_earlier_layers(tiny, scene_video, tmp_path):
    service = FoleyService(tiny)
    bell = service(parse_request({"region": {"video": str(scene_video), "file_in": 1.0, "file_out": 3.0},
                                  "caption": "a bell rings", "steps": 2, "output_dir": str(tmp_path)},
                                 service.capabilities()))
    take = np.full((96000, 1), 0.05, np.float32)
    sf.write(tmp_path / "take.wav", take, 48000)
    with_layers = _serve(service, _request(scene_video, tmp_path, tmp_path / "take.wav", [0.5, 1.5], method="nag",
                                           existing_mix=bell["stem_path"], previous_captions=["a bell rings"]))
    alone = _serve(service, _request(scene_video, tmp_path, tmp_path / "take.wav", [0.5, 1.5], method="nag"))
    assert with_layers["stems"][0]["metadata"]["method_used"] == "nag"
    assert alone["stems"][0]["metadata"]["method_used"] == "independent"  # nothing to negate
    a, b = sf.read(with_layers["stems"][0]["stem_path"])[0], sf.read(alone["stems"][0]["stem_path"])[0]
    assert np.abs(a[30000:66000] - b[30000:66000]).max() > 1e-3 and np.array_equal(a[:24000], b[:24000])


def test_a_take_too_short_for_what_is_kept_is_refused_from_its_header(tmp_path):
    """Before the job is accepted (and before `stepfoley generate` loads a model): the header
    says how long the take is."""
    sf.write(tmp_path / "take.wav", np.zeros(24000, np.float32), 48000)   # 0.5 s
    request = make_request(tmp_path, protocol=2, take=str(tmp_path / "take.wav"), regenerate=[0.2, 0.4])
    request["region"].update(file_out=14.0, project_end=32.0)             # a 2 s stem
    with pytest.raises(RequestError, match=r"is 0.500 s long, but the stem keeps it up to 2.000 s"):
        check_request_paths(parse_request(request))
    with pytest.raises(RequestError, match=r"ends before take_offset \(0.6 s\)"):
        check_request_paths(parse_request({**request, "take_offset": 0.6}))
    # what is left after the offset, said as such: not the file's own length
    with pytest.raises(RequestError, match=r"holds 0.300 s after its take_offset of 0.2 s, but the stem keeps"):
        check_request_paths(parse_request({**request, "take_offset": 0.2}))
    # an offset an hour into a recording is named as given (6 significant digits said 3600.12)
    with pytest.raises(RequestError, match=r"ends before take_offset \(3600.125 s\)"):
        check_request_paths(parse_request({**request, "take_offset": 3600.125}))
    ok = check_request_paths(parse_request({**request, "regenerate": [0.5, 2.0]}))       # extend from its end
    assert ok.regenerate == (0.5, 2.0)


def test_the_engine_checks_the_takes_length_again_when_it_reads_it(tiny, scene_video, tmp_path):
    sf.write(tmp_path / "take.wav", np.zeros(96000, np.float32), 48000)
    request = check_request_paths(parse_request(_request(scene_video, tmp_path, tmp_path / "take.wav", [0.8, 1.3]),
                                                tiny.capabilities()))
    sf.write(tmp_path / "take.wav", np.zeros(24000, np.float32), 48000)  # cut short after it was checked
    with pytest.raises(Exception, match=r"is 0.500 s long, but the stem keeps it up to 2.000 s"):
        FoleyService(tiny)(request)
    assert [p.name for p in tmp_path.iterdir() if p.suffix == ".wav" and p.name != "take.wav"] == []


def test_a_tenth_of_a_second_is_enough_to_regenerate_whatever_the_rounding(tmp_path):
    request = make_request(tmp_path, protocol=2, take="/t.wav", regenerate=[0.85, 0.95])
    assert 0.95 - 0.85 < 0.1 and parse_request(request).regenerate == (0.85, 0.95)


def test_a_millisecond_kept_is_enough_whatever_the_rounding(tmp_path):
    # a DAW's times: the stem 0.1-2.1 s, the span to 2.099 s, so 0.000999... s kept; it was
    # refused as "1.000 ms of the take, less than 1 ms"
    request = make_request(tmp_path, protocol=2, take="/t.wav", regenerate=[0.0, 2.099 - 0.1])
    request["region"].update(file_in=0.1, file_out=2.1, project_start=0.1, project_end=2.1)
    length = 2.1 - 0.1
    assert length - (2.099 - 0.1) < 0.001 and parse_request(request).regenerate == (0.0, 2.099 - 0.1)


@pytest.mark.parametrize("change, words", [
    ({"take": "/t.wav"}, "take and regenerate go together"),
    ({"regenerate": [0.1, 0.5]}, "take and regenerate go together"),
    ({"take": "/t.wav", "regenerate": [0.5, 0.1]}, "regenerate end (0.1 s) must be after its start"),
    ({"take": "/t.wav", "regenerate": [0.0, 1.0]}, "covers the whole stem"),
    # one 96 kHz sample kept, none at 48 kHz or 16 kHz: the whole take was replaced
    ({"take": "/t.wav", "regenerate": [1e-5, 1.0]}, "leaves 0.010 ms of the take, less than 1 ms"),
    ({"take": "/t.wav", "regenerate": [0.0, 1.0 - 5e-6]}, "leaves 0.005 ms of the take"),
    ({"take": "/t.wav", "regenerate": [0.5, 1.5]}, "after the stem's end"),
    ({"take": "/t.wav", "regenerate": [0.5, 0.55]}, "make at least 0.1 s new"),
    ({"take": "/t.wav", "regenerate": "0.5-0.9"}, "regenerate must be [start, end]"),
    ({"take": "/t.wav", "regenerate": [0.5, None]}, "regenerate end must be a number"),
    ({"take": "t.wav", "regenerate": [0.5, 0.9]}, "must be an absolute path"),
])
def test_bad_extend_and_repair_fields_are_named(tmp_path, change, words):
    with pytest.raises(RequestError) as e:
        parse_request(make_request(tmp_path, protocol=2, **change))
    assert words in e.value.message


def test_extend_and_repair_need_protocol_2_and_playrate_1(tmp_path):
    with pytest.raises(RequestError, match="take, regenerate came with protocol 2"):
        parse_request(make_request(tmp_path, take="/t.wav", regenerate=[0.2, 0.6]))
    request = make_request(tmp_path, protocol=2, take="/t.wav", regenerate=[0.2, 0.6])
    request["region"] = {**request["region"], "playrate": 2.0, "project_end": None}
    with pytest.raises(RequestError, match="needs the picture at playrate 1"):
        parse_request(request)
    ok = parse_request(make_request(tmp_path, protocol=2, take="/t.wav", regenerate=[0.2, 0.6]))
    assert ok.regenerate == (0.2, 0.6) and parse_request(json.loads(json.dumps(ok.to_json()))) == ok
    # a playrate the stem's end overrules: the picture plays at 1 (it was refused as "it is 2")
    region = ok.region
    request["region"] = {"video": region.video, "file_in": region.file_in, "file_out": region.file_out,
                         "playrate": 2.0, "project_start": region.project_start, "project_end": region.project_end}
    assert parse_request(request).region.playrate == 1.0


def test_take_offset_says_where_the_stem_starts_in_the_take(tiny, scene_video, tmp_path):
    rng = np.random.default_rng(2)
    source = (0.1 * rng.standard_normal(3 * 48000)).astype(np.float32)  # an item 1 s into its source
    sf.write(tmp_path / "source.wav", source, 48000, subtype="FLOAT")
    result = _serve(FoleyService(tiny), _request(scene_video, tmp_path, tmp_path / "source.wav", [1.5, 2.0],
                                                 take_offset=1.0))
    out, _ = sf.read(result["stems"][0]["stem_path"], dtype="float32")
    assert np.array_equal(out[:72000], source[48000:120000])
    with pytest.raises(RequestError, match="take_offset says where project_start falls"):
        parse_request(make_request(tmp_path, protocol=2, take_offset=1.0))


def test_an_item_an_hour_into_its_recording_is_kept_from_there(tiny, scene_video, tmp_path):
    """An item cut from a long Foley pass: take_offset was capped at 600 s ("outside 0 .. 600"),
    and what lay before it was read too. The take is read from take_offset, by seeking."""
    rate = 8000
    with sf.SoundFile(str(tmp_path / "pass.wav"), "w", rate, 1, "PCM_16") as f:
        f.seek(3600 * rate)  # a sparse hour, then the item's 3 s
        f.write((np.arange(3 * rate) % 2000 - 1000).astype(np.int16))
    request = _request(scene_video, tmp_path, tmp_path / "pass.wav", [1.5, 2.0], take_offset=3600.0,
                       sample_rate=rate)
    assert check_request_paths(parse_request(request)).take_offset == 3600.0
    [stem] = _serve(FoleyService(tiny), request)["stems"]
    out, _ = sf.read(stem["stem_path"], dtype="float32")
    assert np.array_equal(out[:int(1.5 * rate)] * 32768, np.arange(int(1.5 * rate)) % 2000 - 1000)
    assert stem["metadata"]["kept_untouched"]


def test_the_last_kept_sample_is_read_whatever_the_float_rounding(tiny, scene_video, tmp_path):
    # 1.775 s into the take at 44.1 kHz, a 0.415-1.79 s item: ceil((1.775 + 1.375) * 44100) is
    # one sample less than round(1.775 * 44100) + round(1.375 * 44100), the stem's length
    rate, offset, start, end = 44100, 1.775, 0.415, 1.79
    source = ((np.arange(4 * rate) % 1000 + 1) / 4096).astype(np.float32)   # never 0
    sf.write(tmp_path / "source.wav", source, rate, subtype="FLOAT")
    region = {"video": str(scene_video), "file_in": 1.0, "file_out": 1.0 + (end - start), "project_start": start,
              "project_end": end}
    request = _request(scene_video, tmp_path, tmp_path / "source.wav", [0.5, 1.0], take_offset=offset,
                       sample_rate=rate, region=region)
    [stem] = _serve(FoleyService(tiny), request)["stems"]
    out, _ = sf.read(stem["stem_path"], dtype="float32")
    length = round((end - start) * rate)
    assert out.shape == (length,) and round(offset * rate) + length > math.ceil((offset + end - start) * rate)
    assert out[-1] == source[round(offset * rate) + length - 1] != 0
    assert stem["metadata"]["kept_untouched"]


@pytest.mark.parametrize("take_db", [0.0, -20.0, -40.0, -50.0, -60.0])  # the last two: a take at -76 and -86 dBFS
def test_the_new_part_follows_a_quiet_take(take_db):
    """The model makes the new audio at its own level whatever the take's, while its
    reproduction of the kept audio, held to the take, follows the take: matching that
    reproduction left an extension of a take 40 dB down about 40 dB too loud. The new audio
    next to the seam now comes out as loud as the take next to it."""
    rng = np.random.default_rng(5)
    take = (0.05 * 10 ** (take_db / 20) * rng.standard_normal(64000)).astype(np.float32)
    keep = np.arange(64000) < 32000                      # extend: the last 2 s are new
    audio = take.copy()                                  # the model's reproduction of the kept part
    audio[~keep] = 0.05 * rng.standard_normal(32000)     # the new part at the model's own level
    matched, levels = finish_new_part(audio, KnownAudio(take, keep), 16000)
    take_rms = np.sqrt(np.mean(take[:32000] ** 2))
    new_rms = np.sqrt(np.mean(matched[0, 32000:] ** 2))
    assert 20 * np.log10(new_rms / take_rms) == pytest.approx(0.0, abs=0.5)
    assert levels["level_match_gain_db"] == pytest.approx(take_db, abs=0.5)
    assert levels["level_matched_to"] == "the take next to the seams"


def test_a_take_silent_next_to_the_seam_is_matched_as_a_whole_and_a_silent_one_not_at_all():
    rng = np.random.default_rng(6)
    take = (0.005 * rng.standard_normal(80000)).astype(np.float32)  # 5 s at 16 kHz, 20 dB under the new audio
    take[16000:48000] = 0.0                                          # silent for the 2 s before the seam
    keep = np.arange(80000) < 48000
    audio = (0.05 * rng.standard_normal(80000)).astype(np.float32)
    _, levels = finish_new_part(audio, KnownAudio(take, keep), 16000)
    # the pause is gated out: the take as loud as where it sounds
    assert levels["level_match_gain_db"] == pytest.approx(-20.0, abs=1.0)
    assert levels["level_matched_to"].startswith("the whole kept take")
    # a take of digital silence: the new part at a new track's loudness (the model's own level
    # met the limiter 14 dB over full scale); silent new audio is left as it is
    _, levels = finish_new_part(audio, KnownAudio(np.zeros(80000, np.float32), keep), 16000)
    assert levels["level_matched_to"].startswith("a stem's loudness (-23 LUFS)")
    assert levels["new_part_lufs"] == pytest.approx(mixing.STEM_LUFS, abs=0.5)
    _, levels = finish_new_part(np.zeros(80000, np.float32), KnownAudio(take, keep), 16000)
    assert levels["level_match_gain_db"] == 0.0 and levels["level_matched_to"].startswith("nothing")


@pytest.mark.parametrize("channels", [1, 2])
def test_digital_silence_next_to_the_seam_has_no_offset_to_match(channels):
    """The take's offset (here 0.002, -54 dBFS) was taken out of its digital silence too, which
    then measured as sound next to the seam: the new part was matched to the offset, 35-55 dB
    under the take (in a stereo take, into the channel with the offset alone)."""
    rng = np.random.default_rng(6)
    take = np.zeros((channels, 80000), np.float32)                      # 5 s at 16 kHz
    take[:, :16000] = 0.2 * rng.standard_normal((channels, 16000)) + 0.002 * (np.arange(channels) == 0)[:, None]
    keep = np.arange(80000) < 48000                                     # silent for the 2 s before the seam
    known = KnownAudio(take.mean(axis=0), keep, kept_power(take, keep))
    audio = (0.05 * rng.standard_normal(80000)).astype(np.float32)
    matched, levels = finish_new_part(audio, known, 16000)
    assert levels["level_matched_to"].startswith("the whole kept take")
    take_db = 10 * np.log10(np.mean(known.power[:16000]))
    new_db = 20 * np.log10(np.sqrt(np.mean(matched[0, 48000:] ** 2)))
    assert new_db == pytest.approx(take_db, abs=1.0)
    if channels == 2:  # each channel its share of the take's power: both alike
        np.testing.assert_allclose(channel_balance(take, keep, 16000)[:, 0], [1.0, 1.0], atol=0.05)


def test_the_new_part_of_a_silent_take_reaches_a_stems_loudness_across_the_gate():
    """A hit decoded hot with a decaying tail: turned down by the plain difference of its loudness
    and -23 LUFS, the tail's quiet blocks fell under the -70 LUFS gate, the relative gate moved
    with them and the new part was left up to 0.8 LU over -23."""
    rate = 16000
    time = np.arange(6 * rate) / rate
    keep = time < 2.0
    for decay_s, hot_db in ((0.2, 50), (0.3, 20), (0.5, 50)):
        noise = np.random.default_rng(0).standard_normal(len(time))
        audio = (10 ** (hot_db / 20) * 0.3 * noise * np.exp(-(time - 2.0) / decay_s) * ~keep).astype(np.float32)
        matched, levels = finish_new_part(audio, KnownAudio(np.zeros(len(time), np.float32), keep), rate)
        assert levels["level_matched_to"].startswith("a stem's loudness")
        assert mixing.integrated_loudness(matched[:, ~keep], rate) == pytest.approx(mixing.STEM_LUFS, abs=0.01), decay_s


def test_the_quiet_new_part_of_a_silent_take_is_brought_up_as_far_as_a_stem():
    """A new part the model made 32 dB under a stem's loudness: it was raised only the +24 dB a
    take's level may raise it, and left 8 dB under the -23 LUFS its metadata said; a stem is
    brought up whatever it needs, down to the -70 LUFS silence gate."""
    rate = 16000
    keep = np.arange(6 * rate) < 2 * rate
    noise = np.random.default_rng(3).standard_normal(6 * rate).astype(np.float32) * ~keep
    quiet = noise * 10 ** ((mixing.STEM_LUFS - 32 - mixing.integrated_loudness(noise[None], rate)) / 20)
    matched, levels = finish_new_part(quiet.astype(np.float32), KnownAudio(np.zeros(6 * rate, np.float32), keep), rate)
    assert levels["level_matched_to"].startswith("a stem's loudness")
    assert levels["new_part_lufs"] == pytest.approx(mixing.STEM_LUFS, abs=0.1)
    _, levels = finish_new_part(quiet * 1e-3, KnownAudio(np.zeros(6 * rate, np.float32), keep), rate)  # -92 LUFS
    assert levels["level_match_gain_db"] == 0.0 and levels["level_matched_to"].startswith("nothing")


def test_a_repair_between_a_loud_and_a_quiet_stretch_meets_each_at_its_level():
    """A footstep's ring dying away: the take is 30 dB quieter after the repaired 0.5 s than
    before it. Matched with one gain (the loud side's: the gate leaves the quiet one out), the
    new part ran 30 dB too loud into the quiet take; it now goes from the one level to the other."""
    rate = 16000
    rng = np.random.default_rng(12)
    take = (0.05 * rng.standard_normal(5 * rate)).astype(np.float32)
    take[int(2.5 * rate):] *= np.float32(10 ** (-30 / 20))            # -30 dB after the gap
    keep = np.ones(5 * rate, bool)
    keep[2 * rate:int(2.5 * rate)] = False
    audio = (0.02 * rng.standard_normal(5 * rate)).astype(np.float32)  # the model's, level throughout
    matched, levels = finish_new_part(audio, KnownAudio(take, keep), rate)

    def db(x):
        return 10 * np.log10(np.mean(np.asarray(x, np.float64) ** 2))

    # the first and last 10 ms of the new part (the ramp moves 0.6 dB within each)
    first, last = matched[0, 2 * rate:2 * rate + 160], matched[0, int(2.5 * rate) - 160:int(2.5 * rate)]
    assert db(first) == pytest.approx(db(take[rate:2 * rate]), abs=1.5)
    assert db(last) == pytest.approx(db(take[int(2.5 * rate):int(3.5 * rate)]), abs=1.5)
    assert levels["level_match_gain_db"] == pytest.approx(20 * np.log10(0.05 / 0.02), abs=0.5)
    assert levels["level_match_gain_db_at_end"] == pytest.approx(levels["level_match_gain_db"] - 30, abs=0.5)


def test_between_two_seams_each_measures_the_new_audio_on_its_own_half():
    """The model's audio may itself fade across the gap, here by 30 dB as the take does: measured
    over the whole gap at both seams (its loud start dominating), the new part came out 30 dB
    too quiet at the quiet seam; each seam now measures its own half of the gap."""
    rate = 16000
    rng = np.random.default_rng(13)
    take = (0.05 * rng.standard_normal(5 * rate)).astype(np.float32)
    take[3 * rate:] *= np.float32(10 ** (-30 / 20))
    keep = np.ones(5 * rate, bool)
    keep[2 * rate:3 * rate] = False                                     # a 1 s gap
    audio = (0.02 * rng.standard_normal(5 * rate)).astype(np.float32)
    audio[2 * rate:3 * rate] *= (10 ** (np.linspace(0, -30, rate) / 20)).astype(np.float32)
    matched, _ = finish_new_part(audio, KnownAudio(take, keep), rate)

    def db(x):
        return 10 * np.log10(np.mean(np.asarray(x, np.float64) ** 2))

    # each half's level is taken as flat, so part of the fade within it is left: the ends were
    # 9.7 dB too loud and 20.8 dB too quiet with the whole gap measured at both seams
    start_error = db(matched[0, 2 * rate:2 * rate + 160]) - db(take[rate:2 * rate])
    end_error = db(matched[0, 3 * rate - 160:3 * rate]) - db(take[3 * rate:4 * rate])
    assert 0.0 < start_error < 7.0 and -10.0 < end_error < 0.0


def test_next_to_digital_silence_a_seam_takes_the_other_ones_gain():
    """A take with a recorder's offset before the gap and digital silence after it: the offset,
    measured over the whole take, made the silence sound, and the new part faded down toward
    that offset's level instead of taking the other seam's gain, as a silent side does."""
    rate = 16000
    rng = np.random.default_rng(14)
    take = (0.05 * rng.standard_normal(5 * rate) + 0.01).astype(np.float32)
    take[int(2.5 * rate):] = 0.0
    keep = np.ones(5 * rate, bool)
    keep[2 * rate:int(2.5 * rate)] = False
    audio = (0.02 * rng.standard_normal(5 * rate)).astype(np.float32)
    _, levels = finish_new_part(audio, KnownAudio(take, keep), rate)
    assert levels["level_match_gain_db_at_end"] == levels["level_match_gain_db"]


def test_a_takes_dc_offset_is_not_counted_as_its_loudness():
    # a -40 dBFS take with an offset of 0.05 (a recorder's): its repair came out 14 dB too loud
    rng = np.random.default_rng(9)
    take = (0.01 * rng.standard_normal(80000)).astype(np.float32)
    keep = np.ones(80000, bool)
    keep[32000:48000] = False
    audio = (0.05 * rng.standard_normal(80000)).astype(np.float32)
    plain = finish_new_part(audio, KnownAudio(take, keep), 16000)[1]["level_match_gain_db"]
    offset = finish_new_part(audio, KnownAudio(take + np.float32(0.05), keep), 16000)[1]["level_match_gain_db"]
    assert plain == pytest.approx(-14.0, abs=1.0) and offset == pytest.approx(plain, abs=0.1)
    channels = np.stack([take + np.float32(0.05), take - np.float32(0.02)])
    centred = take.astype(np.float64) - take[keep].mean(dtype=np.float64)
    np.testing.assert_allclose(kept_power(channels, keep), centred ** 2, rtol=0, atol=1e-7)


def test_a_take_a_millisecond_short_of_the_span_is_carried_on_to_it():
    # the request lets a take end up to 1 ms before the span starts: those kept samples were
    # silence, then a cut into the new audio
    rate, hum_hz = 48000, 120.25
    t = np.arange(4 * rate) / rate
    take = (0.3 * np.sin(2 * np.pi * hum_hz * t)).astype(np.float32)[None]
    new = (0.3 * np.sin(2 * np.pi * hum_hz * t + 2.0)).astype(np.float32)[None]
    keep = np.arange(4 * rate) < 2 * rate
    short = 2 * rate - 40                                              # 0.83 ms short
    stem = splice(np.where(np.arange(4 * rate) < short, take, 0), new, keep, int(0.05 * rate), take_length=short)
    assert np.abs(np.diff(stem[0])).max() < 1.5 * 0.3 * 2 * np.pi * hum_hz / rate
    assert np.array_equal(stem[:, :short], take[:, :short])


@pytest.mark.parametrize("rate", [16000, 44100, 48000])
@pytest.mark.parametrize("gain_up_to_db", [0.0, 12.0])
def test_the_new_part_is_limited_as_it_would_be_with_the_whole_take_around_it(rate, gain_up_to_db):
    # only the span over the new part is limited (the whole of a 600 s take took seconds); the
    # new part's hottest peaks sit on its first and last samples, where the limiter's look-ahead,
    # hold and the true-peak filter reach past it
    rng = np.random.default_rng(rate)
    audio = (rng.standard_normal((2, 6 * rate)) * 0.3).astype(np.float32)
    new = np.zeros(6 * rate, bool)
    new[int(2.3 * rate) + 7: int(2.9 * rate)] = True
    new[int(4.1 * rate): int(4.6 * rate) + 3] = True
    for edge in (np.flatnonzero(new)[0], np.flatnonzero(new)[-1]):
        audio[:, edge] = [1.9, -1.7]
    whole = mixing.limit_true_peak(audio * new, rate, mixing.STEM_CEILING_DBTP, gain_up_to_db=gain_up_to_db)
    limited = limit_new_part(audio, new, rate, gain_up_to_db=gain_up_to_db)
    assert np.array_equal(limited, whole)
    assert not limited[:, ~new].any()
    assert not limit_new_part(audio, np.zeros_like(new), rate).any()


def _peak_bytes(work):
    """The most memory `work()` held at once, as tracemalloc counts it (numpy's arrays included)."""
    import tracemalloc
    tracemalloc.start()
    try:
        work()
        return tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def _job_take(tiny, video, tmp_path, samples, regenerate):
    """The take of a repair job (48 kHz, the stem's rate, written as float) as the service holds it."""
    from stepfoley.engine.pipeline import PictureFocus, Region
    from stepfoley.engine.service import TakeAudio, _Take
    from stepfoley.engine.session import StepSession

    sf.write(tmp_path / "take.wav", samples.T, 48000, subtype="FLOAT")
    request = check_request_paths(parse_request(_request(video, tmp_path, tmp_path / "take.wav", regenerate),
                                                tiny.capabilities()))
    region = request.region
    session = StepSession(tiny, Region(video, region.file_in, region.file_out, PictureFocus.from_request(request)))
    return _Take(TakeAudio.read(request, tmp_path / "take.wav"), request, session), request


def test_one_take_is_not_spliced_at_the_models_rate_to_be_ranked(tiny, scene_video, tmp_path, monkeypatch):
    """A lone take is not ranked, so the take as the model hears it is not made for the ranking:
    for a 600 s take that was a splice of the whole of it, thrown away unheard."""
    import stepfoley.engine.service as service_module

    heard = []
    real = service_module._Take.as_heard
    monkeypatch.setattr(service_module._Take, "as_heard", lambda self, track: heard.append(track) or real(self, track))
    sf.write(tmp_path / "take.wav", (0.1 * np.random.default_rng(4).standard_normal(96000)).astype(np.float32),
             48000, subtype="FLOAT")
    result = _serve(FoleyService(tiny), _request(scene_video, tmp_path, tmp_path / "take.wav", [0.8, 1.3]))
    assert heard == [] and len(result["stems"]) == 1 and result["stems"][0]["metadata"]["kept_untouched"]
    assert result["ranking"]["reason"] == "one take: nothing to rank"
    _serve(FoleyService(tiny), _request(scene_video, tmp_path, tmp_path / "take.wav", [0.8, 1.3], variations=2))
    assert len(heard) == 2  # takes that are ranked are heard as their stems will sound


def test_kept_untouched_is_read_from_the_file_to_the_last_kept_sample(tiny, scene_video, tmp_path):
    """The written stem is read back and every kept sample compared, the ones next to the span
    included; a change inside the span (the new part) does not count."""
    samples = (0.1 * np.random.default_rng(12).standard_normal((2, 96000))).astype(np.float32)
    take, request = _job_take(tiny, scene_video, tmp_path, samples, [0.8, 1.3])
    a, b = round(0.8 * 48000), round(1.3 * 48000)
    for where, untouched in ((None, True), (a, True), (b - 1, True), (0, False), (a - 1, False), (b, False),
                             (95999, False)):
        stem = samples.copy()
        if where is not None:
            stem[1, where] += np.float32(0.25)
        sf.write(tmp_path / "stem.wav", stem.T, 48000, subtype="FLOAT")
        assert take.came_back_untouched(tmp_path / "stem.wav", request) is untouched, where


def test_the_kept_samples_are_compared_without_copies_of_them(tiny, scene_video, tmp_path):
    """Checking the stem read back held the take and the stem picked out by a mask, and a sample
    index of 8 bytes a sample: 1 GiB more for a 600 s 8-channel take than the reading itself."""
    samples = (0.1 * np.random.default_rng(13).standard_normal((2, 96000))).astype(np.float32)
    take, request = _job_take(tiny, scene_video, tmp_path, samples, [0.8, 1.3])
    sf.write(tmp_path / "stem.wav", samples.T, 48000, subtype="FLOAT")
    assert take.came_back_untouched(tmp_path / "stem.wav", request)  # once before: nothing loaded while measured
    reading = _peak_bytes(lambda: audio_io.read_audio(tmp_path / "stem.wav"))
    checking = _peak_bytes(lambda: take.came_back_untouched(tmp_path / "stem.wav", request))
    assert checking <= reading + samples.size, (checking, reading)  # a comparison's byte a sample at most


def test_the_kept_mask_is_a_byte_a_sample_and_ends_where_the_span_does():
    from stepfoley.engine.service import _kept

    length = 60 * 48000
    keep = _kept(length, 48000, 30.0, 31.0)
    assert keep.dtype == bool and not keep[30 * 48000:31 * 48000].any() and keep.sum() == 59 * 48000
    assert keep[30 * 48000 - 1] and keep[31 * 48000]
    assert _kept(10, 10, 0.55, 5.0).tolist() == [True] * 6 + [False] * 4  # past the end: to the end
    assert _kept(10, 10, -1.0, 0.3).tolist() == [False] * 3 + [True] * 7  # before the start: from it
    # made by a slice: compared with a sample index it was 10 bytes a sample, three times a job
    assert _peak_bytes(lambda: _kept(length, 48000, 30.0, 31.0)) < 1.5 * length


def test_the_channel_balance_squares_only_what_it_averages():
    """Each channel's offset is the whole kept take's and its power is averaged next to the
    seams: the squares of a whole 600 s take (8 bytes a sample a channel) were worked out for
    4 s of them."""
    rate = 48000
    rng = np.random.default_rng(14)
    take = (np.array([[0.1], [0.03]]) * rng.standard_normal((2, 60 * rate)) + [[0.01], [-0.02]]).astype(np.float32)
    keep = np.ones(60 * rate, bool)
    keep[30 * rate:31 * rate] = False
    _, near = seam_sides(~keep, 2 * rate)
    offset = take.sum(axis=-1, where=keep, dtype=np.float64) / keep.sum()
    power = np.where(take == 0, 0.0, (take.astype(np.float64) - offset[:, None]) ** 2)[:, near].mean(axis=-1)
    assert np.array_equal(channel_balance(take, keep, rate), np.sqrt(power / power.mean()).astype(np.float32)[:, None])
    assert _peak_bytes(lambda: channel_balance(take, keep, rate)) < take.nbytes


def test_a_mostly_new_stem_is_spliced_without_a_copy_of_its_new_part():
    """The new audio goes into the take span by span: picked out by a mask, an extension of a
    second of take to 600 s copied the whole new part, and a sample index of 8 bytes a sample."""
    rate = 48000
    rng = np.random.default_rng(15)
    take = (0.1 * rng.standard_normal((2, 20 * rate))).astype(np.float32)
    new = (0.1 * rng.standard_normal((1, 20 * rate))).astype(np.float32)
    keep = np.arange(20 * rate) < rate
    stem = splice(take, new, keep, 2400)
    assert np.array_equal(stem[:, :rate], take[:, :rate])
    assert np.array_equal(stem[:, rate + 2400:], np.broadcast_to(new[:, rate + 2400:], (2, 19 * rate - 2400)))
    # the stem itself, and the mask's runs
    assert _peak_bytes(lambda: splice(take, new, keep, 2400)) < 2 * take.nbytes
