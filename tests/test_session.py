"""The step-by-step session and the service, on the random-weight embedded model (same code
path as the trained one) and real mini-world video files."""

import math
import os

import numpy as np
import torch
import pytest
import soundfile as sf

from stepfoley.engine import mixing
from stepfoley.engine.errors import AudioError, GenerationCancelled, InvalidInputError, VideoError
from stepfoley.engine.input_files import check_request_paths
from stepfoley.engine.pipeline import Region
from stepfoley.engine.service import FoleyService
from stepfoley.engine.session import (HANDOVER_EASE_S, StepSession, TrackSettings, crossfade_join,
                                      ease_handovers, plan_windows)
from stepfoley.request import parse_request


@pytest.fixture(scope="module")
def tiny():
    from stepfoley.engine.embedded.model import build_embedded_model
    return build_embedded_model(random_weights=True)


@pytest.fixture(scope="module")
def scene_video(tmp_path_factory):
    from stepfoley.lab.miniworld import make_scene, write_scene
    paths = write_scene(make_scene(20_000_001, n_sources=3), tmp_path_factory.mktemp("scene"))
    return paths["video"]


def test_plan_windows_single_and_overlapping():
    def latents(seconds):  # the embedded codec's grid: 512 samples a latent at 16 kHz
        return math.ceil(round(seconds * 16000) / 512)

    assert plan_windows(5.0, 8.0, latents) == [(0.0, 5.0)]
    # 8 s and one 44.1 kHz sample: the same 250 latents, one window (by seconds it was two)
    assert plan_windows(8.0 + 1 / 44100, 8.0, latents) == [(0.0, 8.0 + 1 / 44100)]
    assert len(plan_windows(8.0 + 1 / 16000, 8.0, latents)) == 2
    windows = plan_windows(20.0, 8.0, latents, overlap=1.0)
    assert windows[0][0] == 0.0 and windows[-1][1] == 20.0
    assert all(e - s == 8.0 for s, e in windows)
    assert all(prev[1] - nxt[0] >= 1.0 for prev, nxt in zip(windows, windows[1:]))


def test_crossfade_join_blends_only_over_the_fade_at_equal_power():
    rng = np.random.default_rng(0)
    # a window pushed back to end with the region overlaps the one before it by 600 samples
    first, second = rng.standard_normal(1000).astype(np.float32), rng.standard_normal(1000).astype(np.float32)
    out = crossfade_join([(0, first), (400, second)], 1400, fade=100)
    # the fade sits mid-overlap (650..750); elsewhere one piece is heard as it is
    assert np.array_equal(out[:650], first[:650]) and np.array_equal(out[750:], second[350:])
    assert not np.array_equal(out[650:750], first[650:750])
    ones = np.ones(1000, np.float32)
    gains = crossfade_join([(0, ones), (400, 0 * ones)], 1400, 100) ** 2 \
        + crossfade_join([(0, 0 * ones), (400, ones)], 1400, 100) ** 2
    np.testing.assert_allclose(gains, 1.0, atol=1e-6)  # uncorrelated windows keep their power
    # three windows, the fade no longer than a short overlap
    pieces = [(0, ones[:800]), (700, ones[:800]), (1200, ones[:800])]
    weights = [crossfade_join([(o, p if i == j else 0 * p) for j, (o, p) in enumerate(pieces)], 2000, 300)
               for i in range(3)]
    np.testing.assert_allclose(sum(w ** 2 for w in weights), 1.0, atol=1e-6)
    assert np.count_nonzero(weights[0] * weights[1]) == 100  # 700..800: the whole overlap


def test_a_later_window_takes_the_earlier_ones_tone_and_level_through_the_handover_then_its_own():
    # two 8 s windows at 16 kHz overlapping by 1 s: the later one made 7 dB louder and with
    # energy above 3 kHz that the earlier one lacks over the same stretch
    from scipy.signal import butter, sosfilt

    rate, rng = 16000, np.random.default_rng(7)
    earlier = sosfilt(butter(8, 1500, fs=rate, output="sos"), 0.05 * rng.standard_normal(8 * rate)).astype(np.float32)
    later = (0.05 * rng.standard_normal(8 * rate)).astype(np.float32)
    pieces = [(0, earlier), (7 * rate, later)]
    (_, first), (_, eased) = ease_handovers(pieces, 15 * rate, rate, rate)
    assert first is earlier
    overlap = slice(0, rate)

    def db(wave):
        return 10 * np.log10(np.mean(wave.astype(np.float64) ** 2))

    def above_3k(wave):
        power = np.abs(np.fft.rfft(wave.astype(np.float64))) ** 2
        return 10 * np.log10(power[np.fft.rfftfreq(len(wave), 1 / rate) > 3000].sum() / power.sum())

    assert db(eased[overlap]) == pytest.approx(db(earlier[7 * rate:]), abs=0.5)
    assert above_3k(eased[overlap]) < above_3k(later[overlap]) - 18
    back = rate + int(HANDOVER_EASE_S * rate)  # the crossfade ends with the overlap here
    assert np.array_equal(eased[back:], later[back:])  # its own again, to the sample
    halfway = slice(back - rate, back - rate + rate // 10)
    assert db(later[halfway]) - 6 < db(eased[halfway]) < db(later[halfway]) - 1  # on its way back
    # nothing to match against: a silent earlier window leaves the later one as it was
    (_, _), (_, kept) = ease_handovers([(0, 0 * earlier), (7 * rate, later)], 15 * rate, rate, rate)
    assert np.array_equal(kept, later)


def test_each_window_is_matched_to_the_one_before_it_as_made_and_not_to_one_event():
    rate, rng = 16000, np.random.default_rng(8)
    windows = [(0.02 * (1 + k) * rng.standard_normal(8 * rate)).astype(np.float32) for k in range(3)]
    # 16 s: 0-8, 7-15 and the last pushed back to 8-16 (a 7 s overlap, its crossfade at 11-12 s)
    pieces = [(0, windows[0]), (7 * rate, windows[1]), (8 * rate, windows[2])]
    eased = ease_handovers(pieces, 16 * rate, rate, rate)
    # the third is matched to the second as it was made, not as it was eased: no chain of corrections
    alone = ease_handovers(pieces[1:], 16 * rate, rate, rate)
    assert np.array_equal(eased[2][1], alone[1][1])
    assert not np.array_equal(eased[2][1], windows[2])
    # a footstep in the earlier window's overlap alone: two different sounds there, not one at
    # two levels, so the later window is left as it was made, in level (it moved 11.6 dB when it
    # was not) and in tone (it was fitted to the footstep)
    background = (0.001 * rng.standard_normal(8 * rate)).astype(np.float32)
    step = background.copy()
    step[7 * rate + 8000: 7 * rate + 8800] += 0.5 * rng.standard_normal(800).astype(np.float32)
    (_, _), (_, level) = ease_handovers([(0, step), (7 * rate, background)], 15 * rate, rate, rate)
    assert np.array_equal(level, background)


def test_windows_of_other_balance_at_one_level_keep_that_level_through_the_handover():
    # the same level over their overlap, the earlier under 400 Hz and the later over 2 kHz: the
    # match EQ takes 24 dB out of the later one, and its level, measured after that, used to be
    # read as an event in one window and not restored (the join fell 24 dB at the handover)
    from scipy.signal import butter, sosfilt

    rate, rng = 16000, np.random.default_rng(9)

    def noise(kind, hz):
        wave = sosfilt(butter(8, hz, btype=kind, fs=rate, output="sos"), rng.standard_normal(8 * rate))
        return (0.05 * wave / np.sqrt(np.mean(wave ** 2))).astype(np.float32)

    earlier, later = noise("low", 400), noise("high", 2000)
    (_, _), (_, eased) = ease_handovers([(0, earlier), (7 * rate, later)], 15 * rate, rate, rate)
    rms = np.sqrt(np.mean(eased[:rate].astype(np.float64) ** 2))
    assert 20 * np.log10(rms / 0.05) == pytest.approx(0.0, abs=1.0)


def test_track_one_is_cfg_then_nag_uses_the_mix(tiny, scene_video):
    session = StepSession(tiny, Region(scene_video, 1.0, 5.0))
    first = session.next_track(TrackSettings("a ball bounces", seed=3, steps=2))
    assert first.metadata["method_used"] == "independent"  # nothing to negate: plain CFG
    assert first.samples.shape == (4 * 16000,)
    # x̃: the -20 LUFS mix, true-peak limited like every composite (random weights are peaky)
    expected = mixing.limit_true_peak(mixing.loudness_normalize(first.samples, 16000, -20.0), 16000, -1.0)[0]
    np.testing.assert_allclose(session.conditioning_mix(), expected, atol=1e-6)
    second = session.next_track(TrackSettings("rain falling", seed=3, steps=2))
    assert second.metadata["method_used"] == "nag"
    assert second.metadata["track_index"] == 2
    assert set(second.metadata["timings"]) == {"video_features", "sampling", "decoding", "finishing"}
    assert second.metadata["precision"] == "fp32"  # CPU, precision 'auto'


def test_nag_differs_from_independent_and_seed_reproduces(tiny, scene_video):
    def second_track(method, seed=5):
        s = StepSession(tiny, Region(scene_video, 0.0, 3.0))
        s.next_track(TrackSettings("a bell rings", seed=1, steps=2))
        return s.next_track(TrackSettings("footsteps", method=method, seed=seed, steps=2)).samples

    nag, again, independent = second_track("nag"), second_track("nag"), second_track("independent")
    np.testing.assert_array_equal(nag, again)
    assert np.abs(nag - independent).max() > 1e-3


def test_existing_bounce_at_another_rate_and_channels(tiny, scene_video):
    session = StepSession(tiny, Region(scene_video, 0.0, 2.0))
    stereo = np.random.default_rng(0).standard_normal((2, 48000 * 2)).astype(np.float32) * 0.1
    session.add_track(stereo, 48000)
    assert session.tracks[0].samples.shape == (32000,)
    assert session.next_track(TrackSettings("wind blowing", steps=1)).metadata["method_used"] == "nag"


def test_long_region_is_windowed(tiny, tmp_path, monkeypatch):
    from stepfoley.lab.miniworld import make_scene, write_scene
    video = write_scene(make_scene(20_000_002, duration=10.0), tmp_path)["video"]
    session = StepSession(tiny, Region(video, 0.0, 10.0))
    # each window is its own draw of the seed's noise and reads the loudness curve from its own start
    sampled, sample_window = [], StepSession._sample_window

    def spy(self, *args, **kwargs):
        sampled.append((kwargs["window"], kwargs["window_start"]))
        return sample_window(self, *args, **kwargs)

    monkeypatch.setattr(StepSession, "_sample_window", spy)
    progress = []
    # the highest seed a request may carry: its second window is a later draw, not seed + 1
    track = session.next_track(TrackSettings("rain falling", steps=1, seed=2**63 - 1),
                               on_progress=lambda *p: progress.append(p))
    assert track.metadata["windows"] == 2
    assert sampled == [(0, 0.0), (1, 2.0)]  # the last window ends with the region: 2-10 s
    assert track.samples.shape == (160000,)
    # the picture of both windows first, then every sampling step, decoding, and the take's finishing
    assert [p for p in progress if p[0] == "features"][-1] == ("features", 2, 2)
    assert [p for p in progress if p[0] == "sampling"] == [("sampling", 1, 2), ("sampling", 2, 2)]
    assert progress[-3:] == [("decoding", 2, 2), ("finishing", 0, 1), ("finishing", 1, 1)]
    phases = ("features", "sampling", "decoding", "finishing")
    assert [p[0] for p in progress] == sorted((p[0] for p in progress), key=phases.index)


def test_joining_and_levelling_the_takes_is_said_and_hears_a_cancel_take_by_take(tiny, scene_video):
    """After the last window was decoded, 8 takes of 600 s were joined and levelled 25-46 s
    without a word, and a cancel waited all of it out."""
    said = []

    def cancelled():  # asked for once the second take's finishing is said
        return ("finishing", 1, 3) in said

    session = StepSession(tiny, Region(scene_video, 1.0, 5.0))
    with pytest.raises(GenerationCancelled, match="take 2 of 3"):
        session.next_variations(TrackSettings("rain falling", steps=1), 3, lambda *p: said.append(p), cancelled)
    assert said[-2:] == [("finishing", 0, 3), ("finishing", 1, 3)] and session.tracks == []


def test_layers_silent_over_the_region_are_heard_as_no_layer(tiny, scene_video):
    """A bounce of layers that play nothing here (or only below the -70 LUFS gate) is not an
    audio condition: the track is made as the first one is, the same sound for the same seed."""
    alone = StepSession(tiny, Region(scene_video, 1.0, 5.0)).next_track(TrackSettings("rain falling", seed=3, steps=2))
    quiet = 1e-5 * np.random.default_rng(0).standard_normal(4 * 16000).astype(np.float32)
    # digital silence; a hiss at about -100 LUFS; an offset alone (a silent track on a hardware
    # chain), whose onset the K-weighting read as a click over the gate
    for layers in ([0 * quiet], [quiet], [np.full_like(quiet, 0.01)], [quiet + 0.5],
                   [1e4 * quiet + 0.01, -1e4 * quiet],  # a heard layer and one that cancels it: an offset
                   [np.full_like(quiet[:16000], 0.01)]):  # a stem of 1 s, padded: its offset's end was a step
        session = StepSession(tiny, Region(scene_video, 1.0, 5.0))
        for layer in layers:
            session.add_track(layer, 16000)
        assert session.conditioning_mix() is None
        track = session.next_track(TrackSettings("rain falling", seed=3, steps=2))
        assert track.metadata["method_used"] == alone.metadata["method_used"] == "independent"
        np.testing.assert_array_equal(track.samples, alone.samples)
        # and it says so, as a first track does not: the user's bounce may have come out silent
        assert (track.metadata["earlier_layers_silent"], alone.metadata["earlier_layers_silent"]) == (True, False)
    heard = StepSession(tiny, Region(scene_video, 1.0, 5.0))
    heard.add_track(alone.samples, alone.sample_rate)
    assert heard.next_track(TrackSettings("wind", seed=3, steps=2)).metadata["earlier_layers_silent"] is False
    # two layers each under the gate, over it together: heard, as their sum is what plays
    together = StepSession(tiny, Region(scene_video, 1.0, 5.0))
    for _ in range(2):
        together.add_track(20 * quiet, 16000)
    assert not mixing.is_heard(20 * quiet[None], 16000) and together.conditioning_mix() is not None


@pytest.mark.parametrize("rate", [16000, 44100, 48000, 96000])
def test_a_bounces_offset_is_no_sound_at_any_rate(tiny, scene_video, rate):
    """The offset was taken out after resampling to the model's rate, whose zero padding had
    turned it into a step at each end: a 48 kHz bounce of an offset alone was a layer to negate,
    and under hiss x̃ began with a click at 0.89 of full scale (at 16 kHz, no resampling, 0.2)."""
    hiss = 0.01 * np.random.default_rng(0).standard_normal(4 * rate).astype(np.float32)
    silent = StepSession(tiny, Region(scene_video, 1.0, 5.0))
    silent.add_track(np.full(4 * rate, 0.3, np.float32), rate)
    assert silent.conditioning_mix() is None
    heard = StepSession(tiny, Region(scene_video, 1.0, 5.0))
    heard.add_track(hiss + 0.1, rate)
    mix = heard.conditioning_mix()
    edges = np.abs(np.concatenate([mix[:160], mix[-160:]])).max()   # the first and last 10 ms
    assert edges < 6 * np.median(np.abs(mix)), (edges, np.median(np.abs(mix)))
    # nor is a reference recording's: it came through as a mean of a quarter of full scale
    reference = heard.reference_condition(hiss + 0.1, rate)
    assert abs(float(reference.mean())) < 0.01 * float(np.abs(reference).mean())
    if rate < 44100:  # a 12 kHz whistle needs the rate to hold it
        return
    # nor a layer with nothing in the model's band: heard on the resampler's clicks at its ends,
    # the region's or its own where it ends sooner
    for seconds, amplitude in ((4, 0.5), (2, 0.9)):
        whistle = StepSession(tiny, Region(scene_video, 1.0, 5.0))
        tone = amplitude * np.sin(2 * np.pi * 12000 * np.arange(seconds * rate) / rate + 0.3)
        whistle.add_track(tone.astype(np.float32), rate)
        assert whistle.conditioning_mix() is None, (seconds, amplitude)


def test_each_window_of_a_long_region_hears_its_own_part_of_the_layers_at_the_trained_loudness():
    from stepfoley.engine.session import window_condition
    rng = np.random.default_rng(0)
    quiet, silent = 0.01 * rng.standard_normal(8 * 16000), np.zeros(8 * 16000)
    heard = window_condition(np.stack([quiet, silent]).astype(np.float32), 16000)
    assert mixing.integrated_loudness(heard[:1], 16000) == pytest.approx(-20.0, abs=0.05)
    assert not heard[1].any()  # a take whose stack is silent here hears its silence
    assert window_condition(np.stack([silent, 1e-6 * quiet]).astype(np.float32), 16000) is None
    assert window_condition(np.stack([silent + 0.01, silent]).astype(np.float32), 16000) is None  # an offset


def test_a_window_fits_each_distinct_condition_once(monkeypatch):
    """A job's takes all hear one x̃: each window's part of it was normalized and limited once per
    take. Rows the same to the bit are fitted once and heard alike; other rows each their own."""
    from stepfoley.engine import session as session_module
    from stepfoley.engine.session import window_condition

    rng = np.random.default_rng(3)
    shared, other = (0.01 * rng.standard_normal(8 * 16000)).astype(np.float32), \
        (0.2 * rng.standard_normal(8 * 16000)).astype(np.float32)
    alone = window_condition(np.stack([shared, other]), 16000)
    fits, real = [], session_module.conditioning_mix
    monkeypatch.setattr(session_module, "conditioning_mix", lambda *a, **k: fits.append(1) or real(*a, **k))
    heard = window_condition(np.stack([shared, shared, other, shared.copy()]), 16000)
    assert len(fits) == 2
    assert np.array_equal(heard, alone[[0, 0, 1, 0]])


def test_a_window_over_which_the_layers_are_silent_is_made_as_a_first_track(tmp_path, monkeypatch):
    """A 10 s region is made in two windows, 0-8 s and 2-10 s; the earlier layer plays only in
    the first 1.5 s, so the second window hears no layer: it is sampled exactly as a first track
    samples it, and sounds the same once it has eased back to its own after the crossfade at
    4.5-5.5 s, up to the stem's gain and its limiter, which act on each track as a whole."""
    from stepfoley.engine.embedded.model import build_embedded_model
    from stepfoley.lab.miniworld import make_scene, write_scene
    trained = build_embedded_model()
    video = write_scene(make_scene(20_000_002, duration=10.0), tmp_path)["video"]
    layer = np.zeros(10 * 16000, np.float32)
    layer[:24000] = 0.3 * np.random.default_rng(1).standard_normal(24000)
    decoded = []  # each window's latent, as sampled
    decode = StepSession._decode
    monkeypatch.setattr(StepSession, "_decode", lambda self, latent: decoded.append(latent) or decode(self, latent))
    session = StepSession(trained, Region(video, 0.0, 10.0))
    session.add_track(layer, 16000)
    track = session.next_track(TrackSettings("rain falling", method="nag", seed=5, steps=2))
    first = StepSession(trained, Region(video, 0.0, 10.0)).next_track(TrackSettings("rain falling", seed=5, steps=2))
    assert track.metadata["method_used"] == "nag_conditional" and track.metadata["windows_without_audio"] == [2]
    # window 2's own computation: method_used named only the region's
    assert track.metadata["method_without_audio"] == "conditional"
    assert first.metadata["windows_without_audio"] == [] and first.metadata["method_without_audio"] is None
    assert torch.equal(decoded[1], decoded[3]) and not torch.equal(decoded[0], decoded[2])
    after = slice(int((5.5 + HANDOVER_EASE_S) * 16000), None)
    assert np.corrcoef(track.samples[after], first.samples[after])[0, 1] > 0.98
    assert np.corrcoef(track.samples[:64000], first.samples[:64000])[0, 1] < 0.9  # the first window heard it


def test_a_reference_silent_over_a_window_makes_that_window_without_it(tiny, tmp_path):
    from stepfoley.lab.miniworld import make_scene, write_scene
    video = write_scene(make_scene(20_000_002, duration=10.0), tmp_path)["video"]
    one_shot = np.zeros(10 * 16000, np.float32)  # a hit, then silence: nothing to sound like after 2 s
    one_shot[:16000] = 0.3 * np.random.default_rng(2).standard_normal(16000)
    track = StepSession(tiny, Region(video, 0.0, 10.0)).next_track(
        TrackSettings("a door slams", method="reference", seed=1, steps=1), reference=(one_shot, 16000))
    assert track.metadata["method_used"] == "reference" and track.metadata["windows_without_audio"] == [2]
    assert track.metadata["method_without_audio"] == "independent"


def test_audio_the_decoder_overflows_on_is_a_failed_generation_not_a_bad_file(tiny, scene_video, monkeypatch):
    """Guidance far past the usual range drives the latent to hundreds: the embedded codec caps
    what it stands for (codec.MAX_LATENT), so the track is finite and finished. A decoder that
    still overflows (another codec) is a generation that failed (lower the guidance), not an
    input file to export again."""
    from stepfoley.engine.errors import GenerationError

    settings = TrackSettings("rain", method="dual", w1=100.0, w2=-100.0, w3=100.0, seed=0, steps=2)
    track = StepSession(tiny, Region(scene_video, 0.0, 2.0)).next_track(settings)
    assert np.isfinite(track.samples).all() and track.samples.std() > 0
    monkeypatch.setattr(StepSession, "_decode", lambda self, latent: np.full((latent.shape[0], 32000), np.inf))
    with pytest.raises(GenerationError, match="the decoded audio became NaN or infinite.*lower the guidance"):
        StepSession(tiny, Region(scene_video, 0.0, 2.0)).next_track(settings)


def test_bad_regions_and_cancel(tiny, scene_video):
    with pytest.raises(VideoError, match="past the end"):
        StepSession(tiny, Region(scene_video, 6.0, 12.0)).next_track(TrackSettings("rain", steps=1))
    with pytest.raises(GenerationCancelled):
        StepSession(tiny, Region(scene_video, 0.0, 2.0)).next_track(
            TrackSettings("rain", steps=3), is_cancelled=lambda: True)


def _request(video, out, **extra):
    return {"region": {"video": str(video), "file_in": 1.0, "file_out": 3.0, "playrate": 1.0},
            "caption": "a ball bounces", "seed": 2, "steps": 1, "output_dir": str(out),
            "sample_rate": 48000, "format": "wav24", **extra}


def _serve(service, request: dict) -> dict:
    return service(check_request_paths(parse_request(request, service.capabilities())))


def test_memory_running_out_in_a_job_is_said_so_not_called_a_bug(tiny, scene_video, tmp_path, monkeypatch):
    """torch's allocator failing (a real one here: 16 TB asked for while decoding) reached the
    DAW as internal_error, "please report it"; it is the machine's memory, and the next job may fit."""
    import torch

    from stepfoley.engine.errors import OutOfMemory

    monkeypatch.setattr(StepSession, "_decode", lambda self, latent: torch.empty(2**42))
    with pytest.raises(OutOfMemory, match=r"^The computer ran out of memory while making this track \(2\.0 s, "
                                          r"3 variations\)\. Close other programs, or ask for fewer variations"):
        _serve(FoleyService(tiny), _request(scene_video, tmp_path, protocol=2, variations=3))
    assert OutOfMemory.code == "out_of_memory" and os.listdir(tmp_path) == []


def test_a_model_too_large_for_the_memory_is_said_so(monkeypatch):
    import torch

    from stepfoley.engine import loading
    from stepfoley.engine.errors import OutOfMemory
    from stepfoley.engine.service import load_runtime_model

    monkeypatch.setattr(loading, "load_foley_model", lambda **kwargs: torch.empty(2**42))
    with pytest.raises(OutOfMemory, match=r"^The model does not fit in the computer's memory\. Close other programs, "
                                          r"or choose a smaller model \(--model\)\.$"):
        load_runtime_model(model="tiny-random", device="cpu")

    # the GPU's (its error stands in here: there is no GPU), with the CPU to fall back on
    def gpu_full(**kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(loading, "load_foley_model", gpu_full)
    with pytest.raises(OutOfMemory, match=r"in the GPU's memory\. .*, or run it on the CPU \(--device cpu\)\.$"):
        load_runtime_model(model="tiny-random", device="cpu")

    # said where a weights file was read: passed on as it is, not said again in other words
    def file_too_large(**kwargs):
        raise OutOfMemory("There is not enough memory to load the weights file w.pth (4.1 GB).") from MemoryError()

    monkeypatch.setattr(loading, "load_foley_model", file_too_large)
    with pytest.raises(OutOfMemory, match=r"^There is not enough memory to load the weights file w\.pth"):
        load_runtime_model(model="tiny-random", device="cpu")


def test_a_region_past_the_end_of_the_video_is_refused_in_its_own_times_before_any_work(tiny, scene_video, tmp_path):
    """A region made in several windows, past the end of the 8 s video: refused as the region
    the DAW asked for, before any picture is read (its last window was named, "4.000-12.000 s",
    after the picture features of the others)."""
    from stepfoley.engine.video import VideoError
    progress = []
    region = {"video": str(scene_video), "file_in": 0.5, "file_out": 12.0, "playrate": 1.0}
    request = check_request_paths(parse_request(_request(scene_video, tmp_path, region=region),
                                                FoleyService(tiny).capabilities()))
    with pytest.raises(VideoError, match=r"^The region 0\.500-12\.000 s runs past the end of "):
        FoleyService(tiny)(request, on_progress=lambda *p: progress.append(p))
    assert progress == []


def test_service_writes_new_stems_at_the_project_rate(tiny, scene_video, tmp_path):
    service = FoleyService(tiny)
    first = _serve(service, _request(scene_video, tmp_path))
    second = _serve(service, _request(scene_video, tmp_path, existing_mix=first["stem_path"], caption="rain falling"))
    assert first["stem_path"] != second["stem_path"]
    data, sr = sf.read(second["stem_path"])
    assert sr == 48000 and data.shape == (96000,)
    assert sf.info(second["stem_path"]).subtype == "PCM_24"
    meta = second["metadata"]
    assert meta["method_used"] == "nag" and meta["caption"] == "rain falling" and meta["seed"] == 2
    assert mixing.true_peak(data[None].astype(np.float32), 48000) <= -1.0 + 1e-3


@pytest.mark.parametrize("playrate, sample_rate", [(0.25, 48000), (1.0, 8000)], ids=["slow motion", "8 kHz"])
def test_a_varispeeded_or_lower_rate_stem_still_leaves_at_a_stems_loudness(scene_video, tmp_path, playrate,
                                                                           sample_rate):
    """K-weighted loudness moves with the spectrum: a stem at playrate 0.25 or at 8 kHz came out
    2-4.5 dB under -23 LUFS, its peaks leaving room (the trained model, as a user hears it). It is
    brought back where its peaks leave room: short of -23 LUFS only with them at the ceiling."""
    from stepfoley.engine.embedded.model import build_embedded_model
    request = _request(scene_video, tmp_path, caption="rain falling", steps=4, sample_rate=sample_rate,
                       format="wav32f")
    request["region"]["playrate"] = playrate
    stem = _serve(FoleyService(build_embedded_model()), request)
    data, rate = sf.read(stem["stem_path"], dtype="float32")
    assert rate == sample_rate and len(data) == round(2.0 / playrate * sample_rate)
    lufs, peak = mixing.integrated_loudness(data[None], rate), mixing.true_peak(data[None], rate)
    assert lufs == pytest.approx(mixing.STEM_LUFS, abs=0.3) or (
        lufs < mixing.STEM_LUFS and peak >= mixing.STEM_CEILING_DBTP - 0.05), (lufs, peak)
    assert peak <= mixing.STEM_CEILING_DBTP + 1e-3


def test_a_peaky_stem_the_limiter_left_under_a_stems_loudness_is_not_limited_harder_when_varispeeded(tmp_path):
    """Sparse footsteps the session could not bring to -23 LUFS within the limiter's drive: finished
    again at playrate 0.999, a second limiter pass squashed them 2 dB more than at playrate 1. Only
    what the varispeed moved is made up, and only as far as the peaks leave room."""
    from stepfoley.engine.session import Track

    rng = np.random.default_rng(1)
    steps = (0.02 * rng.standard_normal(8 * 16000)).astype(np.float32)
    for t in np.arange(0.5, 7.5, 0.5):
        i = int(t * 16000)
        steps[i:i + 160] += (0.9 * rng.standard_normal(160) * np.exp(-np.arange(160) / 30)).astype(np.float32)
    finished, levels = mixing.finish_stem(steps[None], 16000)
    assert levels.lufs < mixing.STEM_LUFS - 1  # the limiter's drive ran out
    track = Track(finished[0], 16000, {"lufs": levels.lufs})
    loudness = {}
    for playrate in (1.0, 0.999, 0.5):
        request = parse_request({"region": {"video": str(tmp_path / "v.mp4"), "file_in": 1.0, "file_out": 9.0,
                                            "playrate": playrate}, "caption": "footsteps", "output_dir": str(tmp_path),
                                 "sample_rate": 48000, "format": "wav32f"})
        stem, meta = FoleyService._finished_stem(None, request, track)
        loudness[playrate] = mixing.integrated_loudness(stem, 48000)
        assert mixing.true_peak(stem, 48000) <= mixing.STEM_CEILING_DBTP + 1e-3
    assert loudness[0.999] == pytest.approx(loudness[1.0], abs=0.05)
    assert loudness[0.5] <= loudness[1.0] + 0.05 and meta["resampled_loudness_gain_db"] == 0.0  # no room


def test_the_make_up_gain_after_resampling_reaches_the_tracks_loudness_across_the_gate():
    """A quiet decaying stem whose tail sits near BS.1770's -70 LUFS gate: made up by the plain
    difference of the two loudnesses, its tail's blocks crossed the gate, moved the relative
    gate and left it 0.6-0.9 LU under the loudness it was finished at."""
    from stepfoley.engine.service import resampled_loudness_gain_db
    from stepfoley.engine.session import Track

    rate = 16000
    time = np.arange(4 * rate) / rate
    for decay_s in (0.2, 0.3, 0.8):
        noise = np.random.default_rng(1).standard_normal(len(time))
        stem = (0.01 * noise * np.exp(-time / decay_s)).astype(np.float32)[None]   # (1, S)
        track = Track((10 * stem[0]).astype(np.float32), rate, {})
        gain_db = resampled_loudness_gain_db(track, stem, rate)
        reached = mixing.integrated_loudness(stem * np.float32(10 ** (gain_db / 20)), rate)
        assert reached == pytest.approx(mixing.integrated_loudness(track.samples[None], rate), abs=0.01), decay_s


def test_service_varispeeds_to_the_project_length(tiny, scene_video, tmp_path):
    request = _request(scene_video, tmp_path, format="wav32f")
    request["region"]["playrate"] = 2.0  # 2 s of file play in 1 s of project
    result = _serve(FoleyService(tiny), request)
    data, sr = sf.read(result["stem_path"])
    assert data.shape == (48000,) and sf.info(result["stem_path"]).subtype == "FLOAT"
    assert result["metadata"]["project_start"] == 0.0


@pytest.mark.parametrize("timeline", [{"playrate": 2.0}, {"project_start": 5.0, "project_end": 6.0}],
                         ids=["playrate", "project_end"])
def test_a_bounce_over_a_stem_shorter_than_its_picture_is_heard_in_the_pictures_time(tiny, scene_video, tmp_path,
                                                                                    monkeypatch, timeline):
    # 2 s of picture over 1 s of timeline (a playrate, or a project_end that says so): the bounce
    # has sound in its first half, so NAG must hear it over the picture's first second
    bounce = np.zeros(48000, np.float32)
    bounce[:24000] = 0.1 * np.random.default_rng(0).normal(0, 1, 24000)
    path = tmp_path / "bounce.wav"
    sf.write(path, bounce, 48000, subtype="FLOAT")
    heard = []
    add_track = StepSession.add_track
    monkeypatch.setattr(StepSession, "add_track",
                        lambda self, *a, **k: (add_track(self, *a, **k), heard.append(self.tracks[-1].samples)))
    request = _request(scene_video, tmp_path, existing_mix=str(path), caption="rain falling")
    request["region"].update(timeline)
    _serve(FoleyService(tiny), request)
    (track,) = heard                                           # (32000,) at the model's 16 kHz
    rms = [float(np.sqrt(np.mean(track[a:a + 4000] ** 2))) for a in range(0, 32000, 4000)]
    assert min(rms[:3]) > 0.05 and max(rms[5:]) < 1e-3, rms  # sound until 1 s (fades aside), then none


def test_service_stem_lasts_project_end_minus_project_start(tiny, scene_video, tmp_path):
    request = _request(scene_video, tmp_path)
    request["region"].update(project_start=10.0, project_end=11.5)  # 2 s of picture over 1.5 s of timeline
    result = _serve(FoleyService(tiny), request)
    assert sf.read(result["stem_path"])[0].shape == (72000,)
    assert result["metadata"]["project_start"] == 10.0


def test_service_uses_the_models_defaults_for_absent_fields(tiny, scene_video, tmp_path):
    from dataclasses import replace

    from stepfoley.request import GuidanceDefaults

    model = replace(tiny, defaults=GuidanceDefaults(method="independent", alpha=2.0, beta=0.5, steps=1))
    request = _request(scene_video, tmp_path)
    del request["steps"]
    meta = _serve(FoleyService(model), request)["metadata"]
    assert (meta["method"], meta["alpha"], meta["beta"], meta["steps"]) == ("independent", 2.0, 0.5, 1)


@pytest.mark.parametrize("bounce", [False, True])
def test_negative_prompt_steers_away_from_the_previous_captions_with_or_without_a_bounce(tiny, scene_video,
                                                                                          tmp_path, bounce):
    """A client sends no bounce for a method that hears none: the layers' captions alone are
    what negative_prompt steers away from."""
    service = FoleyService(tiny)
    extra = {"existing_mix": _serve(service, _request(scene_video, tmp_path))["stem_path"]} if bounce else {}
    request = _request(scene_video, tmp_path, method="negative_prompt", alpha=3.0,
                       previous_captions=["wind in the trees", "rain"], **extra)
    meta = _serve(service, request)["metadata"]
    assert (meta["negative_caption"], meta["negative_caption_heard"]) == ("wind in the trees, rain", True)


def test_a_bounce_that_falls_short_of_the_region_is_refused_and_one_sample_short_is_not(tiny, scene_video, tmp_path):
    """A DAW bounces the whole selection: a mix holding less (a file cut short, its header still
    saying 2 s) was padded with silence, so the earlier layers were heard over its start only."""
    cut = tmp_path / "cut.wav"
    sf.write(cut, 0.1 * np.ones(96000, np.float32), 48000, subtype="PCM_16")
    os.truncate(cut, 44 + 2 * 24000)  # the header's 2 s, half a second of samples
    (tmp_path / "out").mkdir()
    request = _request(scene_video, tmp_path / "out", existing_mix=str(cut), caption="rain falling")
    with pytest.raises(AudioError, match=r"holds 0\.500 s, but the region is 2\.000 s on the timeline"):
        _serve(FoleyService(tiny), request)
    assert os.listdir(tmp_path / "out") == []
    rounded = tmp_path / "rounded.wav"
    sf.write(rounded, 0.1 * np.sin(2 * np.pi * 440 * np.arange(95999) / 48000), 48000)  # a sound, not an offset
    assert _serve(FoleyService(tiny), {**request, "existing_mix": str(rounded)})["metadata"]["method_used"] == "nag"


def test_service_reports_a_file_that_vanished_after_the_request_was_checked(tiny, scene_video, tmp_path):
    gone = tmp_path / "gone.wav"
    sf.write(gone, _tone(0.5, 16000)[0], 16000)
    request = parse_request(_request(scene_video, tmp_path, existing_mix=str(gone)), tiny.capabilities())
    gone.unlink()
    with pytest.raises(InvalidInputError, match="bounced mix .* does not exist"):
        FoleyService(tiny)(request)


def test_bf16_precision_runs_and_is_recorded(scene_video):
    from stepfoley.engine.service import load_runtime_model

    model = load_runtime_model(model="tiny-random", device="cpu", precision="bf16")
    track = StepSession(model, Region(scene_video, 0.0, 2.0)).next_track(TrackSettings("rain", steps=2))
    assert track.metadata["precision"] == "bf16"
    assert np.isfinite(track.samples).all() and np.abs(track.samples).max() > 0
    with pytest.raises(InvalidInputError, match="precision"):
        load_runtime_model(model="tiny-random", precision="fp8")


def _tone(seconds, sr, channels=1, hz=440.0):
    t = np.arange(int(seconds * sr)) / sr
    return np.tile(0.2 * np.sin(2 * np.pi * hz * t, dtype=np.float64), (channels, 1)).astype(np.float32)


def test_reference_condition_is_looped_to_the_region_at_the_mix_loudness(tiny, scene_video):
    session = StepSession(tiny, Region(scene_video, 0.0, 3.0))
    short = _tone(0.7, 48000, channels=2)
    condition = session.reference_condition(short, 48000)
    assert condition.shape == (3 * 16000,)
    np.testing.assert_allclose(condition[: 11200], condition[11200: 22400], atol=1e-6)  # 0.7 s period
    assert abs(mixing.integrated_loudness(condition[None], 16000) - (-20.0)) < 0.5
    clicks = np.zeros(16000, np.float32)
    clicks[::4000] = 1.0  # sparse clicks: at -20 LUFS their peaks would reach far over 0 dBFS
    assert mixing.true_peak(session.reference_condition(clicks, 16000)[None], 16000) <= -1.0 + 0.05


def test_reference_pulls_where_nag_pushes(tiny, scene_video):
    reference = _tone(2.0, 16000, hz=220.0)  # the region's length: no looping, so both conditions match

    def track(method, beta=1.5):
        session = StepSession(tiny, Region(scene_video, 0.0, 2.0))
        if method == "nag":
            session.add_track(reference, 16000)  # the same sound as an earlier track
            np.testing.assert_allclose(session.conditioning_mix(), session.reference_condition(reference, 16000),
                                       atol=1e-5)
        settings = TrackSettings("footsteps", method=method, beta=beta, seed=4, steps=2)
        return session.next_track(settings, reference=(reference, 16000) if method == "reference" else None)

    # Same audio condition, opposite sign: the two tracks differ only by the direction of beta.
    pulled, pushed, plain = track("reference"), track("nag"), track("independent")
    assert pulled.metadata["method_used"] == "reference"
    assert np.abs(pulled.samples - plain.samples).max() > 1e-3
    assert np.abs(pulled.samples - pushed.samples).max() > 1e-3
    np.testing.assert_array_equal(track("reference", beta=0.0).samples, plain.samples)


def test_reference_needs_its_method_and_a_sound(tiny, scene_video):
    session = StepSession(tiny, Region(scene_video, 0.0, 2.0))
    tone = _tone(1.0, 16000)
    with pytest.raises(InvalidInputError, match="give both or neither"):
        session.next_track(TrackSettings("rain", method="reference", steps=1))
    with pytest.raises(InvalidInputError, match="give both or neither"):
        session.next_track(TrackSettings("rain", steps=1), reference=(tone, 16000))
    with pytest.raises(InvalidInputError, match="silent"):
        session.next_track(TrackSettings("rain", method="reference", steps=1),
                           reference=(np.zeros(16000, np.float32), 16000))
    with pytest.raises(InvalidInputError, match="empty"):
        session.next_track(TrackSettings("rain", method="reference", steps=1),
                           reference=(np.zeros(0, np.float32), 16000))
    # heard as the model hears it: a 20 kHz tone at 48 kHz is above the 16 kHz model's band
    high = (0.05 * np.sin(2 * np.pi * 20000 * np.arange(48000) / 48000)).astype(np.float32)  # -27 LUFS at 48 kHz
    with pytest.raises(InvalidInputError, match="too quiet to hear .*in the model's band"):
        session.next_track(TrackSettings("rain", method="reference", steps=1), reference=(high, 48000))
    # at -6 dBFS too: the resampler's clicks at its ends, where the whistle is cut off, were heard
    for hz in (12000, 20000):
        whistle = (0.5 * np.sin(2 * np.pi * hz * np.arange(48000) / 48000)).astype(np.float32)
        with pytest.raises(InvalidInputError, match="too quiet to hear .*in the model's band"):
            session.next_track(TrackSettings("rain", method="reference", steps=1), reference=(whistle, 48000))
    assert session.tracks == []


def test_service_makes_a_track_that_sounds_like_a_reference(tiny, scene_video, tmp_path):
    reference = tmp_path / "reference.wav"
    sf.write(reference, _tone(0.5, 44100, channels=2).T, 44100)
    before = reference.read_bytes()
    service = FoleyService(tiny)
    result = _serve(service, _request(scene_video, tmp_path, method="reference", reference_audio=str(reference)))
    meta = result["metadata"]
    assert meta["method_used"] == "reference" and meta["reference_audio"] == str(reference)
    assert sf.read(result["stem_path"])[0].shape == (96000,)
    assert reference.read_bytes() == before  # only read
    with pytest.raises(InvalidInputError, match="reference sound .* does not exist"):
        _serve(service, _request(scene_video, tmp_path, method="reference", reference_audio=str(tmp_path / "no.wav")))


def test_a_registered_method_runs_through_the_session(tiny, scene_video, monkeypatch):
    from stepfoley.engine import guidance

    monkeypatch.setitem(guidance.GUIDANCE_METHODS, "half_cfg", guidance.GuidanceMethod(
        "half_cfg", "CFG at half strength", ("cond", "uncond"),
        lambda v, w: guidance.classifier_free_guidance(v["cond"], v["uncond"], w.alpha / 2)))

    def track(method, alpha):
        session = StepSession(tiny, Region(scene_video, 0.0, 2.0))
        return session.next_track(TrackSettings("rain", method=method, alpha=alpha, seed=3, steps=2))

    half = track("half_cfg", 5.0)
    assert half.metadata["method_used"] == "half_cfg"
    np.testing.assert_allclose(half.samples, track("independent", 2.5).samples, atol=1e-5)


def test_takes_made_together_equal_takes_made_alone_and_leave_the_stack_alone(tiny, scene_video):
    session = StepSession(tiny, Region(scene_video, 0.0, 3.0))
    session.next_track(TrackSettings("a bell rings", seed=1, steps=2))
    condition = session.conditioning_mix()
    takes = [TrackSettings("footsteps", method="nag", seed=7, steps=2),
             TrackSettings("rain falling", method="nag", seed=8, steps=2, negative_caption="a bell rings")]
    latents = []  # what the sampler made, before the Griffin-Lim decode
    decode = session._decode
    session._decode = lambda latent: (latents.append(latent.detach().clone()), decode(latent))[1]
    together = session.generate_takes(takes, [condition, condition])
    alone = [session.generate_takes([t], [condition])[0] for t in takes]
    assert len(session.tracks) == 1
    # The sampled latents agree to float precision. The decoded audio only closely: Griffin-Lim's
    # momentum iterations magnify the last-bit differences of batched matrix products (with
    # 2 threads up to a few percent of a quiet sample), so it is compared as a whole.
    assert [tuple(x.shape[:1]) for x in latents] == [(2,), (1,), (1,)]
    torch.testing.assert_close(latents[0], torch.cat(latents[1:]), atol=3e-5, rtol=1e-5)
    for a, b in zip(together, alone):
        assert np.corrcoef(a.samples, b.samples)[0, 1] > 0.999
        assert a.metadata["track_index"] is None and a.metadata["takes_in_batch"] == 2
    assert together[1].metadata["negative_caption"] == "a bell rings"
    assert np.abs(together[0].samples - together[1].samples).max() > 1e-3


def test_the_metadata_says_whether_a_negative_caption_was_heard(tiny, scene_video):
    """Where a negative caption is weighted 0 (MMAudio's form at α <= 1), the stem says it was not
    heard rather than letting the user believe it steered the take."""
    session = StepSession(tiny, Region(scene_video, 0.0, 2.0))

    def heard(alpha, negative, method="negative_prompt"):
        settings = TrackSettings("rain", method=method, alpha=alpha, seed=3, steps=1, negative_caption=negative)
        return session.generate_takes([settings], [None])[0].metadata["negative_caption_heard"]

    # MMAudio's negative prompt (a negative caption with plain CFG) acts only above α 1
    assert (heard(3.0, "a bell rings", "independent"), heard(1.0, "a bell rings", "independent"),
            heard(3.0, "", "independent")) == (True, False, None)
    # the paper's baseline weighs its negative branch -α: heard at α 1 too
    assert (heard(3.0, "a bell rings"), heard(1.0, "a bell rings"), heard(1.0, "")) == (True, True, None)
    # text_boost at α 1 runs without the unconditional branch, which that α weighs 0
    assert (heard(1.0, "a bell rings", "text_boost"), heard(3.0, "a bell rings", "text_boost")) == (False, True)


def test_the_negative_prompt_is_the_papers_baseline(tiny, scene_video):
    """ũ = u(∅, ∅) + α (u(V, C) − u(∅, C_neg)) (Sec. 5.1): at α 1, the embedded model's, it
    still steers away from the earlier captions; with none it is plain CFG."""
    session = StepSession(tiny, Region(scene_video, 0.0, 2.0))

    def take(method, negative=""):
        settings = TrackSettings("rain", method=method, alpha=1.0, seed=3, steps=2, negative_caption=negative)
        return session.generate_takes([settings], [None])[0]

    plain, first = take("independent"), take("negative_prompt")
    assert first.metadata["method_used"] == "conditional"
    np.testing.assert_array_equal(first.samples, plain.samples)
    away = take("negative_prompt", "a bell rings")
    assert away.metadata["method_used"] == "negative_prompt"
    assert np.abs(away.samples - plain.samples).max() > 1e-3
    # a take without one is plain CFG, another computation below α 1: not batched with them
    mixed = [TrackSettings("rain", method="negative_prompt", alpha=0.5, seed=3, steps=1, negative_caption=n)
             for n in ("a bell rings", "")]
    with pytest.raises(InvalidInputError, match="every take made together has a negative caption, or none"):
        session.generate_takes(mixed, [None, None])


def test_the_previous_captions_as_a_negative_are_those_the_text_encoder_hears_whole(tiny, scene_video):
    """Joined all, the previous captions were cut at the text encoder's 75th token: the newest
    layers went unheard, and the metadata said they were heard. Each caption now goes in once
    and whole while there is room, and the metadata counts those left out."""
    session = StepSession(tiny, Region(scene_video, 0.0, 2.0))
    layers = [f"layer {n} of distant church bells ringing over a windy hill" for n in range(12)]
    session.add_captions(layers + layers[:3])  # a split layer names its caption more than once
    negative, left_out = session.previous_as_negative()
    kept = negative.split(", ")
    encoder = tiny.text_encoder
    assert kept == layers[:len(kept)] and left_out == len(layers) - len(kept) > 0
    assert encoder.token_count(negative) <= encoder.max_caption_tokens
    assert encoder.token_count(", ".join(layers[:len(kept) + 1])) > encoder.max_caption_tokens
    track = session.next_track(TrackSettings("rain", method="negative_prompt", seed=3, steps=1))
    assert (track.metadata["negative_caption"], track.metadata["previous_captions_left_out"]) == (negative, left_out)
    assert "previous_captions_left_out" not in session.next_track(TrackSettings("rain", steps=1)).metadata
    given = TrackSettings("rain", method="negative_prompt", seed=3, steps=1, negative_caption="a bell")
    assert "previous_captions_left_out" not in session.next_track(given).metadata  # its own negative: none used
    # a first caption longer than the encoder hears is kept, cut as it would be alone
    long = StepSession(tiny, Region(scene_video, 0.0, 2.0))
    long.add_captions([" ".join(["thunder"] * 90), "rain"])
    assert long.previous_as_negative() == (" ".join(["thunder"] * 90), 1)


def test_every_track_leaves_finished_with_its_levels_in_the_metadata(tiny, scene_video):
    track = StepSession(tiny, Region(scene_video, 0.0, 2.0)).next_track(TrackSettings("rain", seed=2, steps=2))
    meta = track.metadata
    assert {"decoded_lufs", "decoded_peak_dbfs", "pre_limiter_clipped_fraction", "gain_db",
            "limiter_input_true_peak_dbtp", "lufs", "silence_fraction", "level_anchor"} <= set(meta)
    assert meta["level_anchor"] == 0.0  # random weights publish none
    assert meta["lufs"] == pytest.approx(mixing.integrated_loudness(track.samples, 16000))
    assert meta["lufs"] <= mixing.STEM_LUFS + 0.05
    assert mixing.true_peak(track.samples, 16000) <= mixing.STEM_CEILING_DBTP + 1e-3
    # random weights overload the decoder: the finishing measured it before turning it down
    assert meta["pre_limiter_clipped_fraction"] > 0 and meta["gain_db"] < 0


def test_takes_made_together_must_agree_on_method_and_strengths(tiny, scene_video):
    session = StepSession(tiny, Region(scene_video, 0.0, 2.0))
    with pytest.raises(InvalidInputError, match="share the method"):
        session.generate_takes([TrackSettings("rain", alpha=2.0, steps=1), TrackSettings("rain", alpha=3.0, steps=1)],
                               [None, None])
    with pytest.raises(InvalidInputError, match="one condition"):
        session.generate_takes([TrackSettings("rain", steps=1)], [])


def test_the_model_level_anchor_reaches_guided_tracks_only(tiny, scene_video):
    from dataclasses import replace

    held, free = (replace(tiny, defaults=replace(tiny.defaults, level_anchor=a)) for a in (0.5, 0.0))
    region = Region(scene_video, 0.0, 2.0)

    def make(model, **settings):
        return StepSession(model, region).next_track(TrackSettings("rain", seed=4, steps=2, **settings))

    guided_held, guided_free = make(held, alpha=4.5), make(free, alpha=4.5)
    assert guided_held.metadata["level_anchor"] == 0.5 and guided_free.metadata["level_anchor"] == 0.0
    assert guided_held.metadata["decoded_lufs"] != pytest.approx(guided_free.metadata["decoded_lufs"], abs=0.1)
    plain_held, plain_free = make(held, alpha=1.0), make(free, alpha=1.0)  # the conditional flow alone
    assert plain_held.metadata["level_anchor"] == 0.0
    assert np.array_equal(plain_held.samples, plain_free.samples)


def test_a_repair_samples_only_the_windows_that_reach_its_new_part(tiny, tmp_path, monkeypatch):
    """A 20 s region is made in windows 0-8, 7-15 and 12-20 s; a repair at 18.5-19 s needs the
    last window and the one before it (the handover between them is matched to it). Every window
    used to be sampled and decoded: a click at the end of a 10 min take cost the whole take's."""
    from stepfoley.engine import session as session_module
    from stepfoley.engine.session import KnownAudio
    from stepfoley.lab.miniworld import make_scene, write_scene
    video = write_scene(make_scene(20_000_003, duration=20.0), tmp_path)["video"]
    take = (0.1 * np.random.default_rng(4).standard_normal(20 * 16000)).astype(np.float32)
    keep = np.ones(20 * 16000, bool)
    keep[int(18.5 * 16000):19 * 16000] = False
    sampled, sample_window = [], StepSession._sample_window

    def spy(self, *args, **kwargs):
        sampled.append(kwargs["window"])
        return sample_window(self, *args, **kwargs)

    monkeypatch.setattr(StepSession, "_sample_window", spy)
    settings = TrackSettings("rain falling", steps=1, seed=3)
    [repaired] = StepSession(tiny, Region(video, 0.0, 20.0)).next_variations(settings, 1, known=KnownAudio(take, keep))
    assert sampled == [1, 2]
    assert repaired.metadata["windows"] == 3 and repaired.metadata["windows_sampled"] == 2
    monkeypatch.setattr(session_module, "windows_needed", lambda spans, new: [True] * len(spans))
    [every] = StepSession(tiny, Region(video, 0.0, 20.0)).next_variations(settings, 1, known=KnownAudio(take, keep))
    assert sampled[2:] == [0, 1, 2]
    np.testing.assert_array_equal(repaired.samples[~keep], every.samples[~keep])
