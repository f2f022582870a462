"""Spectrogram pictures of stems, drawn with Pillow alone (no matplotlib in the install).

A linear-frequency STFT in dB, coloured with a dark-to-bright map, with a title line, a time
axis in seconds and a frequency axis in kHz. Linear frequency (not mel) keeps the picture
honest about where energy sits: a 4 kHz tone at 16 kHz sits exactly halfway up the plot.
Rendering is pure (samples in, PIL image out); saving is the caller's business.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from stepfoley.engine.errors import InvalidInputError

# Colour stops from black through purple and orange to pale yellow: brightness rises
# monotonically, so loud reads as bright even in greyscale.
COLOUR_STOPS = np.array([
    (0.00, 0, 0, 4),
    (0.15, 30, 12, 70),
    (0.35, 110, 25, 110),
    (0.55, 190, 55, 80),
    (0.75, 245, 125, 20),
    (0.90, 250, 200, 60),
    (1.00, 252, 255, 170),
], dtype=np.float64)

BACKGROUND = (255, 255, 255)
INK = (20, 20, 20)


@dataclass(frozen=True)
class SpectrogramStyle:
    width: int = 800
    height: int = 300
    margin_left: int = 52     # room for "8 kHz" labels
    margin_right: int = 14
    margin_top: int = 26      # the title line
    margin_bottom: int = 34   # tick labels and the "seconds" caption
    n_fft: int = 512
    hop: int = 128
    dynamic_range_db: float = 80.0
    font_size: int = 12

    def __post_init__(self):
        if self.plot_width < 16 or self.plot_height < 16:
            raise InvalidInputError(
                f"A {self.width}x{self.height} spectrogram leaves no room to plot; use at least "
                f"{self.margin_left + self.margin_right + 16}x{self.margin_top + self.margin_bottom + 16} pixels.")
        if self.n_fft < 16 or self.hop < 1:
            raise InvalidInputError(f"n_fft={self.n_fft} and hop={self.hop} must be at least 16 and 1.")

    @property
    def plot_width(self) -> int:
        return self.width - self.margin_left - self.margin_right

    @property
    def plot_height(self) -> int:
        return self.height - self.margin_top - self.margin_bottom

    @property
    def plot_box(self) -> tuple[int, int, int, int]:
        """(left, top, right, bottom) of the plot area in pixels, right/bottom exclusive."""
        return (self.margin_left, self.margin_top,
                self.margin_left + self.plot_width, self.margin_top + self.plot_height)

    def frequency_row(self, frequency_hz: float, sample_rate: int) -> float:
        """The image row of a frequency: 0 Hz at the bottom row, Nyquist at the top row."""
        fraction = frequency_hz / (sample_rate / 2)
        return self.margin_top + (1.0 - fraction) * (self.plot_height - 1)

    def time_column(self, time_s: float, duration_s: float) -> float:
        return self.margin_left + time_s / duration_s * (self.plot_width - 1)


def power_db(samples: np.ndarray, n_fft: int, hop: int) -> np.ndarray:
    """Power spectrogram in dB relative to its loudest bin: (n_fft // 2 + 1, frames), <= 0."""
    # samples: (S,)
    wave = np.asarray(samples, np.float64).reshape(-1)
    if wave.size < n_fft:
        wave = np.pad(wave, (0, n_fft - wave.size))
    n_frames = 1 + (wave.size - n_fft) // hop
    starts = np.arange(n_frames) * hop
    frames = wave[starts[:, None] + np.arange(n_fft)[None, :]] * np.hanning(n_fft)[None, :]
    power = np.abs(np.fft.rfft(frames, axis=1)).T ** 2
    # Digital silence has no loudest bin; a fixed tiny reference draws it black.
    reference = max(float(power.max()), 1e-12)
    return 10.0 * np.log10(np.maximum(power, reference * 1e-12) / reference)


def colourize(level: np.ndarray) -> np.ndarray:
    """Levels in [0, 1] -> uint8 RGB (..., 3) through COLOUR_STOPS."""
    level = np.clip(level, 0.0, 1.0)
    channels = [np.interp(level, COLOUR_STOPS[:, 0], COLOUR_STOPS[:, c]) for c in (1, 2, 3)]
    return np.round(np.stack(channels, axis=-1)).astype(np.uint8)


def nice_step(span: float, max_ticks: int) -> float:
    """The smallest of 1, 2, 5 x 10^k giving at most `max_ticks` intervals over `span`."""
    raw = span / max(1, max_ticks)
    power = 10.0 ** math.floor(math.log10(raw))
    for multiple in (1, 2, 5, 10):
        if multiple * power >= raw:
            return multiple * power
    return 10 * power


def _label(value: float, step: float) -> str:
    decimals = max(0, -math.floor(math.log10(step) + 1e-9))
    return f"{value:.{decimals}f}"


def _font(size: int) -> ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except TypeError:  # Pillow < 10.1 has only the fixed bitmap font
        return ImageFont.load_default()


def spectrogram_image(samples: np.ndarray, sample_rate: int, title: str = "",
                      style: SpectrogramStyle = SpectrogramStyle()) -> Image.Image:
    """An RGB picture of the spectrogram of mono `samples` (S,) with title and axes."""
    # samples: (S,) float
    wave = np.asarray(samples, np.float32).reshape(-1)
    if wave.size == 0:
        raise InvalidInputError("Cannot draw the spectrogram of an empty track (it has no samples).")
    if not np.all(np.isfinite(wave)):
        raise InvalidInputError("Cannot draw a spectrogram: the track holds NaN or infinite samples.")
    if isinstance(sample_rate, bool) or int(sample_rate) != sample_rate or sample_rate <= 0:
        raise InvalidInputError(f"The sample rate must be a positive whole number of Hz, got {sample_rate!r}.")
    duration = wave.size / sample_rate

    db = power_db(wave, style.n_fft, style.hop)
    level = 1.0 + db / style.dynamic_range_db                      # 0 dB -> 1, -range -> 0
    rgb = colourize(level[::-1])                                   # row 0 = Nyquist (top)
    plot = Image.fromarray(rgb, "RGB").resize((style.plot_width, style.plot_height), Image.BILINEAR)

    image = Image.new("RGB", (style.width, style.height), BACKGROUND)
    left, top, right, bottom = style.plot_box
    image.paste(plot, (left, top))
    draw = ImageDraw.Draw(image)
    font = _font(style.font_size)
    draw.rectangle((left - 1, top - 1, right, bottom), outline=INK)
    if title:
        draw.text((left, top - 4), title, fill=INK, font=font, anchor="ls")

    time_step = nice_step(duration, max(2, style.plot_width // 70))
    for i in range(int(math.floor(duration / time_step + 1e-9)) + 1):
        t = i * time_step
        x = style.time_column(t, duration)
        draw.line((x, bottom, x, bottom + 4), fill=INK)
        draw.text((x, bottom + 6), _label(t, time_step), fill=INK, font=font, anchor="mt")
    draw.text((right, style.height - 2), "time (s)", fill=INK, font=font, anchor="rd")

    nyquist_khz = sample_rate / 2000
    freq_step = nice_step(nyquist_khz, max(2, style.plot_height // 30))
    for i in range(int(math.floor(nyquist_khz / freq_step + 1e-9)) + 1):
        khz = i * freq_step
        y = style.frequency_row(khz * 1000, sample_rate)
        draw.line((left - 5, y, left - 1, y), fill=INK)
        draw.text((left - 7, y), _label(khz, freq_step), fill=INK, font=font, anchor="rm")
    draw.text((4, top - 4), "kHz", fill=INK, font=font, anchor="ls")
    return image
