"""Sound-synthesis primitives for the mini-world: shaped noise, event placement, envelopes.

Everything is vectorized numpy on float32/float64 arrays at one sample rate; the sources in
`sources.py` combine these into one stem each.
"""

import numpy as np


def band_noise(rng: np.random.Generator, n: int, sr: int, low_hz: float, high_hz: float,
               slope: float = 0.0) -> np.ndarray:
    """White noise shaped in the frequency domain to a band with soft (raised-cosine) edges.

    `slope` tilts the band in dB/octave around its centre, so two noises in the same band can
    still differ in colour. Returned at unit RMS.
    """
    spectrum = np.fft.rfft(rng.standard_normal(n))
    freqs = np.fft.rfftfreq(n, 1.0 / sr)
    edge = 0.25  # edge width as a fraction of the band frequency, so the band does not ring
    rise = np.clip((freqs - low_hz * (1 - edge)) / (low_hz * 2 * edge + 1e-9), 0, 1)
    fall = np.clip((high_hz * (1 + edge) - freqs) / (high_hz * 2 * edge + 1e-9), 0, 1)
    gain = np.sin(0.5 * np.pi * rise) ** 2 * np.sin(0.5 * np.pi * fall) ** 2
    centre = np.sqrt(low_hz * high_hz)
    gain *= 10 ** (slope * np.log2(np.maximum(freqs, 1.0) / centre) / 20)
    noise = np.fft.irfft(spectrum * gain, n)
    return noise / (np.sqrt(np.mean(noise ** 2)) + 1e-12)


def place_events(template: np.ndarray, onsets: np.ndarray, gains: np.ndarray, n: int) -> np.ndarray:
    """Sum copies of `template` starting at integer sample `onsets`, each scaled by its gain;
    copies running past the end are cut."""
    out = np.zeros(n)
    for onset, gain in zip(onsets.astype(int), gains):
        if 0 <= onset < n:
            length = min(len(template), n - onset)
            out[onset:onset + length] += gain * template[:length]
    return out


def frames_to_samples(per_frame: np.ndarray, samples_per_frame: int, n: int) -> np.ndarray:
    """A per-frame control value as a smooth per-sample curve: linear between frame centres,
    so a frame's value is reached in the middle of that frame's samples."""
    centres = (np.arange(len(per_frame)) + 0.5) * samples_per_frame
    return np.interp(np.arange(n), centres, per_frame)


def gate_to_samples(gate: np.ndarray, samples_per_frame: int, n: int, ramp: int) -> np.ndarray:
    """A per-frame on/off gate held for whole frames (so on/off instants are frame-accurate),
    with `ramp`-sample linear fades inside the on frames so switching does not click."""
    held = np.repeat(gate.astype(np.float64), samples_per_frame)[:n]
    held = np.pad(held, (0, n - len(held)))
    kernel = np.ones(ramp) / ramp
    # Fade in after the first on-sample and fade out before the last one, so the sound lies
    # entirely inside the lit frames: never anticipates nor outlasts the picture.
    fade_in = np.convolve(held, kernel)[:n]
    fade_out = np.convolve(held[::-1], kernel)[:n][::-1]
    return np.minimum(fade_in, fade_out)


def smooth_random_curve(rng: np.random.Generator, n_frames: int, n_knots: int,
                        low: float, high: float) -> np.ndarray:
    """A slowly varying random curve in [low, high]: random knots joined by cosine easing."""
    knots = rng.uniform(low, high, n_knots)
    positions = np.linspace(0, n_frames - 1, n_knots)
    t = np.arange(n_frames)
    index = np.clip(np.searchsorted(positions, t, side="right") - 1, 0, n_knots - 2)
    frac = (t - positions[index]) / (positions[index + 1] - positions[index])
    ease = 0.5 - 0.5 * np.cos(np.pi * frac)
    return knots[index] * (1 - ease) + knots[index + 1] * ease


def random_intervals(rng: np.random.Generator, n_frames: int, low: int, high: int,
                     first_max: int) -> np.ndarray:
    """Event frames separated by random gaps in [low, high] frames, the first within
    `first_max` frames, all inside the clip."""
    frames = [int(rng.integers(0, first_max + 1))]
    while True:
        nxt = frames[-1] + int(rng.integers(low, high + 1))
        if nxt >= n_frames:
            return np.asarray(frames, dtype=int)
        frames.append(nxt)
