"""The match EQ of an extended or repaired take (engine.tone_match), on noise made by the test."""

import numpy as np
import pytest
from scipy.signal import butter, sosfilt

from stepfoley.engine.session import KnownAudio, finish_new_part
from stepfoley.engine.tone_match import TONE_MATCH_DB, apply_tone_gains, band_edges, tone_match_gains, true_runs

RATE = 16000


def _noise(seed: int, seconds: float, low_pass_hz: float | None = None) -> np.ndarray:
    wave = 0.05 * np.random.default_rng(seed).standard_normal(int(seconds * RATE))
    if low_pass_hz is not None:
        wave = sosfilt(butter(8, low_pass_hz, fs=RATE, output="sos"), wave)
    return wave.astype(np.float32)


def _share_above(wave: np.ndarray, hz: float) -> float:
    """The share of the wave's power above `hz`, in dB."""
    power = np.abs(np.fft.rfft(wave.astype(np.float64))) ** 2
    return 10 * np.log10(power[np.fft.rfftfreq(len(wave), 1 / RATE) > hz].sum() / power.sum())


def test_the_new_part_loses_what_the_take_does_not_have_and_keeps_the_takes_level():
    # a take of noise under 1.5 kHz extended by the model's broadband noise: above 3 kHz the
    # take has nothing, so the new part is cut there as far as the match goes
    take = _noise(1, 4.0, low_pass_hz=1500)
    keep = np.arange(len(take)) < 2 * RATE
    audio = take.copy()
    audio[~keep] = 4 * _noise(2, 2.0)                       # the new part: broadband, and louder
    matched, levels = finish_new_part(audio, KnownAudio(take, keep), RATE)
    before, after = _share_above(audio[~keep], 3000), _share_above(matched[0, ~keep], 3000)
    assert before > -3 and after - before < -18
    # cut above 3 kHz as far as it goes, and the take's low bands, a larger share of it, raised as far
    assert levels["tone_match_db"] == list(TONE_MATCH_DB)
    # the level is matched after the tone, by the take's own measure
    rms = lambda w: np.sqrt(np.mean(w.astype(np.float64) ** 2))  # noqa: E731
    assert 20 * np.log10(rms(matched[0, ~keep][: RATE]) / rms(take[keep][-RATE:])) == pytest.approx(0.0, abs=0.5)


def test_a_new_part_of_the_takes_own_balance_is_left_nearly_as_it_is():
    take = _noise(3, 4.0, low_pass_hz=4000)
    keep = np.arange(len(take)) < 2 * RATE
    gains = tone_match_gains(take, keep, _noise(4, 4.0, low_pass_hz=4000), ~keep, RATE)
    audible = (band_edges(RATE)[1:] < 3500)  # above the cutoff both are at the filter's floor
    assert np.abs(gains[audible]).max() < 1.0


def test_the_filter_neither_delays_nor_fades_the_audio_at_its_ends():
    audio = _noise(5, 1.0)
    np.testing.assert_allclose(apply_tone_gains(audio, np.zeros(24), RATE), audio, atol=2e-4)
    click = np.zeros(RATE, np.float32)
    click[RATE // 2] = 1.0
    cut = apply_tone_gains(click, np.linspace(0.0, -20.0, 24), RATE)
    assert len(cut) == RATE and int(np.argmax(np.abs(cut))) == RATE // 2  # zero phase: no shift
    # a steady tone through a cut keeps one level to its first and last samples (a check on the
    # ends' handling; padding them with silence would pass it too, the response being short)
    tone = (0.5 * np.sin(2 * np.pi * 440 * np.arange(RATE) / RATE)).astype(np.float32)
    shaped = apply_tone_gains(tone, np.linspace(-6.0, -20.0, 24), RATE)
    rms = [np.sqrt(np.mean(shaped[a:a + 160] ** 2)) for a in (0, RATE // 2, RATE - 160)]
    assert 20 * np.log10(rms[0] / rms[1]) == pytest.approx(0.0, abs=0.5)
    assert 20 * np.log10(rms[2] / rms[1]) == pytest.approx(0.0, abs=0.5)
    assert len(apply_tone_gains(np.zeros(0, np.float32), np.zeros(24), RATE)) == 0


def test_an_offset_is_not_heard_as_low_end():
    # a DC offset in the take alone used to raise the lowest band to the boost's limit
    take = _noise(7, 4.0, low_pass_hz=4000) + np.float32(0.01)
    keep = np.arange(len(take)) < 2 * RATE
    gains = tone_match_gains(take, keep, _noise(8, 4.0, low_pass_hz=4000), ~keep, RATE)
    assert abs(gains[0]) < 1.5


def test_nothing_to_match_against_leaves_the_tone_alone():
    audio = _noise(6, 4.0)
    keep = np.arange(len(audio)) < 2 * RATE
    _, levels = finish_new_part(audio, KnownAudio(np.zeros_like(audio), keep), RATE)
    assert levels["tone_match_db"] is None
    # too short a side to measure a spectrum (under one analysis frame)
    assert tone_match_gains(audio, np.arange(len(audio)) < 500, audio, ~keep, RATE) is None


def test_true_runs_finds_runs_touching_either_end():
    mask = np.array([1, 1, 0, 0, 1, 0, 1, 1], bool)
    assert [(int(a), int(b)) for a, b in true_runs(mask)] == [(0, 2), (4, 5), (6, 8)]
    assert true_runs(np.zeros(5, bool)) == []
    assert [(int(a), int(b)) for a, b in true_runs(np.ones(3, bool))] == [(0, 3)]


def test_the_response_runs_in_straight_lines_of_db_between_band_centres():
    # firwin2 given the band gains as amplitudes sat 5.5 dB down half way from 0 to -24 dB
    for rate in (16000, 48000):
        edges = band_edges(rate)
        centres = (edges[:-1] + edges[1:]) / 2
        gains = np.where(np.arange(len(centres)) < 12, 0.0, -24.0)
        impulse = np.zeros(rate, np.float32)
        impulse[rate // 2] = 1.0
        response = np.abs(np.fft.rfft(apply_tone_gains(impulse, gains, rate).astype(np.float64)))
        freqs = np.fft.rfftfreq(rate, 1 / rate)

        def db_at(hz):
            return 20 * np.log10(response[np.argmin(np.abs(freqs - hz))])

        low, high = centres[11], centres[12]
        for share in (0.25, 0.5, 0.75):
            assert db_at(low + share * (high - low)) == pytest.approx(-24.0 * share, abs=1.0)
        assert db_at(centres[5]) == pytest.approx(0.0, abs=0.5) and db_at(centres[18]) == pytest.approx(-24.0, abs=1.0)


def test_only_the_needed_stretch_is_filtered_as_the_whole_would_be():
    wave = _noise(5, 6.0)
    gains = np.linspace(-12.0, 6.0, 24)
    needed = np.zeros(len(wave), bool)
    needed[3 * RATE: 4 * RATE] = True
    part = apply_tone_gains(wave, gains, RATE, needed=needed)
    whole = apply_tone_gains(wave, gains, RATE)
    np.testing.assert_allclose(part[needed], whole[needed], atol=1e-6)
    reach = int(0.064 * RATE) // 2 + 1
    assert np.array_equal(part[: 3 * RATE - reach], wave[: 3 * RATE - reach])   # far from it: as it was
    assert np.array_equal(part[4 * RATE + reach:], wave[4 * RATE + reach:])
    assert np.array_equal(apply_tone_gains(wave, gains, RATE, needed=np.zeros(len(wave), bool)), wave)

