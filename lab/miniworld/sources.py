"""The eight kinds of sound source of the mini-world.

Each kind is one function `(rng, width, height, clock) -> SourceTrack`: it draws its own
parameters from `rng`, simulates its motion on the frame grid, derives its event frames from
that motion, and synthesizes a sound whose onsets sit exactly on those frames (frame f starts at
sample f * samples_per_frame). Sounds differ by spectrum (low thud, tonal beep, high hiss, low
rumble, click, harmonic hum, inharmonic ring, mid-band footstep) and by timing.
"""

import colorsys
from dataclasses import dataclass, field

import numpy as np

from . import draw, synth


@dataclass(frozen=True)
class Clock:
    """The shared time grid: whole frames, a whole number of samples per frame."""

    n_frames: int
    fps: int
    sample_rate: int

    @property
    def samples_per_frame(self) -> int:
        return self.sample_rate // self.fps

    @property
    def n_samples(self) -> int:
        return self.n_frames * self.samples_per_frame

    def onsets(self, frames: np.ndarray) -> np.ndarray:
        return np.asarray(frames, dtype=int) * self.samples_per_frame


@dataclass(frozen=True)
class SourceTrack:
    alpha: np.ndarray          # (T, h, w) coverage in [0, 1]
    rgb: np.ndarray            # (T, 3) colour in [0, 1]
    wave: np.ndarray           # (S,) unscaled stem
    events: tuple              # ((name, start_frame, end_frame), ...), end exclusive
    params: dict = field(default_factory=dict)     # scalar sound/visual parameters
    controls: dict = field(default_factory=dict)   # per-frame control curves (T,)


def random_colour(rng: np.random.Generator) -> np.ndarray:
    hue, sat, val = rng.uniform(0, 1), rng.uniform(0.55, 1.0), rng.uniform(0.75, 1.0)
    return np.asarray(colorsys.hsv_to_rgb(hue, sat, val), dtype=np.float32)


def _constant_rgb(colour: np.ndarray, clock: Clock) -> np.ndarray:
    return np.broadcast_to(colour, (clock.n_frames, 3)).astype(np.float32)


def _intervals(active: np.ndarray, name: str) -> tuple:
    """Maximal runs of True frames as (name, start, end) events."""
    padded = np.concatenate([[False], active.astype(bool), [False]])
    edges = np.flatnonzero(np.diff(padded.astype(int)))
    return tuple((name, int(s), int(e)) for s, e in zip(edges[::2], edges[1::2]))


def _impulses(frames: np.ndarray, name: str) -> tuple:
    return tuple((name, int(f), int(f) + 1) for f in frames)


def ball(rng, width, height, clock, variant: str = "rubber") -> SourceTrack:
    """A ball bouncing on the box floor; at each floor contact a low, pitch-dropping thud
    (rubber) or a metallic clank (metal). The picture is the same for both."""
    x, y = draw.box_grid(height, width)
    radius = width * rng.uniform(0.08, 0.14)
    impacts = synth.random_intervals(rng, clock.n_frames, 8, 20, first_max=10)
    t = np.arange(clock.n_frames)
    # Arcs between impacts; virtual impacts before the first and after the last close the arcs.
    edges = np.concatenate([[impacts[0] - 14], impacts, [max(impacts[-1] + 14, clock.n_frames)]])
    arc = np.searchsorted(edges, t, side="right") - 1
    gap = (edges[arc + 1] - edges[arc]).astype(np.float32)
    s = (t - edges[arc]) / gap
    max_rise = height - 2 * radius - 2
    rise = max_rise * np.minimum(1.0, (gap / 20.0) ** 2) * 4 * s * (1 - s)
    cy = height - 1 - radius - rise
    cx = width / 2 + (width / 2 - radius - 1) * 0.8 * np.sin(2 * np.pi * t / rng.uniform(60, 160)
                                                              + rng.uniform(0, 2 * np.pi))
    alpha = draw.disc(x, y, cx, cy, np.full(clock.n_frames, radius))

    rgb = _constant_rgb(random_colour(rng), clock)   # drawn before the sound: variants look alike
    incoming = np.concatenate([[14], np.diff(impacts)])    # a longer fall hits harder
    gains = np.minimum(1.0, incoming / 20.0) * rng.uniform(0.8, 1.0, len(impacts))
    template, params = _clank(rng, clock.sample_rate) if variant == "metal" else _thud(rng, clock.sample_rate)
    wave = synth.place_events(template, clock.onsets(impacts), gains, clock.n_samples)
    return SourceTrack(alpha, rgb, wave,
                       _impulses(impacts, "impact"), {**params, "radius_px": radius})


def _thud(rng, sr) -> tuple[np.ndarray, dict]:
    """A rubber ball's impact: a low sine whose pitch drops as it decays, over a short knock."""
    f0 = rng.uniform(55, 140)
    tau = rng.uniform(0.04, 0.09)
    n = int(0.35 * sr)
    tt = np.arange(n) / sr
    phase = 2 * np.pi * np.cumsum(f0 * (1 + 0.8 * np.exp(-tt / 0.012))) / sr
    body = np.sin(phase) * np.exp(-tt / tau)
    knock = synth.band_noise(rng, n, sr, 80, 1200, slope=-6) * np.exp(-tt / 0.006) * 0.5
    return body + knock, {"thud_hz": f0, "decay_s": tau}


def _clank(rng, sr) -> tuple[np.ndarray, dict]:
    """A metal ball's impact: a bright click and inharmonic partials well above a thud, damped
    fast (a clank, not a bell's ring)."""
    f0 = rng.uniform(1000, 2200)
    tau = rng.uniform(0.04, 0.1)
    n = int(0.4 * sr)
    tt = np.arange(n) / sr
    ratios, weights = (1.0, 2.13, 3.41, 5.26), (1.0, 0.7, 0.45, 0.3)
    ring = sum(w * np.sin(2 * np.pi * f0 * r * tt + rng.uniform(0, 2 * np.pi)) * np.exp(-tt * (1 + 0.6 * k) / tau)
               for k, (r, w) in enumerate(zip(ratios, weights)) if f0 * r < 0.45 * sr)
    click = synth.band_noise(rng, n, sr, 2500, 7000) * np.exp(-tt / 0.0015) * 0.25
    return (ring + click) * np.minimum(1.0, tt / 0.001), {"clank_hz": f0, "decay_s": tau}


def lamp(rng, width, height, clock) -> SourceTrack:
    """A lamp blinking on and off; a steady beep exactly while it is lit."""
    x, y = draw.box_grid(height, width)
    radius = min(width, height) * rng.uniform(0.2, 0.32)
    lit = np.zeros(clock.n_frames, dtype=bool)
    frame = int(rng.integers(0, 12))
    while frame < clock.n_frames:
        on = int(rng.integers(4, 16))
        lit[frame:frame + on] = True
        frame += on + int(rng.integers(5, 21))
    cx = np.full(clock.n_frames, width * rng.uniform(0.4, 0.6))
    cy = np.full(clock.n_frames, height * rng.uniform(0.4, 0.6))
    alpha = draw.disc(x, y, cx, cy, radius)
    colour = random_colour(rng)
    brightness = np.where(lit, 1.0, 0.18).astype(np.float32)
    rgb = colour[None, :] * brightness[:, None]

    sr = clock.sample_rate
    freq = rng.uniform(700, 2200)
    tt = np.arange(clock.n_samples) / sr
    tone = np.sin(2 * np.pi * freq * tt) + 0.25 * np.sin(4 * np.pi * freq * tt)
    gate = synth.gate_to_samples(lit, clock.samples_per_frame, clock.n_samples, ramp=int(0.005 * sr))
    return SourceTrack(alpha, rgb.astype(np.float32), tone * gate, _intervals(lit, "lit"),
                       {"beep_hz": freq, "radius_px": radius}, {"lit": lit.astype(np.float32)})


def rain(rng, width, height, clock) -> SourceTrack:
    """Falling rain streaks whose number follows the intensity; a hiss at the same intensity."""
    x, y = draw.box_grid(height, width)
    max_drops = 24
    intensity = np.clip(synth.smooth_random_curve(rng, clock.n_frames, 6, -0.5, 1.0), 0, 1)
    visible = np.round(intensity * max_drops).astype(int)        # drops shown per frame
    density = visible / max_drops                                 # what the ear gets too
    streak = rng.uniform(3.0, 6.0)
    drop_x = rng.uniform(1, width - 1, max_drops)
    speed = rng.uniform(2.5, 5.0, max_drops)
    start = rng.uniform(0, height + streak, max_drops)
    t = np.arange(clock.n_frames)[:, None]
    head = (start + speed * t) % (height + streak)
    shown = np.arange(max_drops)[None, :] < visible[:, None]
    head = np.where(shown, head, -10 * height)                    # hidden drops leave the box
    alpha = draw.vertical_streaks(x, y, drop_x, head - streak, head, half_width=0.5)
    colour = np.clip(random_colour(rng) * 0.3 + 0.7, 0, 1)

    sr = clock.sample_rate
    low = rng.uniform(2000, 3500)
    hiss = synth.band_noise(rng, clock.n_samples, sr, low, min(7500, low * 2.5), slope=rng.uniform(-3, 3))
    envelope = synth.frames_to_samples(density, clock.samples_per_frame, clock.n_samples)
    return SourceTrack(alpha, _constant_rgb(colour, clock), hiss * envelope,
                       _intervals(visible > 0, "raining"),
                       {"hiss_low_hz": low, "max_drops": max_drops}, {"intensity": density.astype(np.float32)})


def flag(rng, width, height, clock) -> SourceTrack:
    """A flag on a pole waving with a varying amplitude; wind noise following that amplitude."""
    x, y = draw.box_grid(height, width)
    n = clock.n_frames
    pole_x = width * rng.uniform(0.12, 0.25)
    flag_w = (width - pole_x - 1) * rng.uniform(0.75, 1.0)
    flag_h = height * rng.uniform(0.3, 0.45)
    top = height * rng.uniform(0.1, 0.25)
    max_amp = height * 0.12
    amplitude = np.clip(synth.smooth_random_curve(rng, n, 6, -0.4, 1.0), 0, 1)
    phase = np.cumsum(rng.uniform(0.5, 0.9) * (0.3 + amplitude))          # waves faster in gusts
    along = np.clip((x - pole_x) / flag_w, 0, 1)                           # (h, w)
    offset = max_amp * amplitude[:, None, None] * along * np.sin(2 * np.pi * along * 1.3 - phase[:, None, None])
    cloth_top = top + offset
    inside_x = np.minimum(np.clip(0.5 - (pole_x - x), 0, 1), np.clip(0.5 - (x - pole_x - flag_w), 0, 1))
    inside_y = np.minimum(np.clip(0.5 - (cloth_top - y), 0, 1), np.clip(0.5 - (y - cloth_top - flag_h), 0, 1))
    cloth = inside_x * inside_y
    pole = draw.rectangle(x, y, np.full(n, pole_x - 1.2), np.full(n, top - 1), np.full(n, pole_x),
                          np.full(n, height - 1.0))
    alpha = np.maximum(cloth, pole)

    sr = clock.sample_rate
    low = rng.uniform(120, 250)
    wind = synth.band_noise(rng, clock.n_samples, sr, low, low * rng.uniform(3, 5), slope=-4)
    envelope = synth.frames_to_samples(amplitude, clock.samples_per_frame, clock.n_samples)
    return SourceTrack(alpha.astype(np.float32), _constant_rgb(random_colour(rng), clock), wind * envelope,
                       _intervals(amplitude > 0.15, "waving"),
                       {"wind_low_hz": low}, {"amplitude": amplitude.astype(np.float32)})


def pendulum(rng, width, height, clock) -> SourceTrack:
    """A swinging pendulum; a short click at each extreme of its swing (tick left, tock right)."""
    x, y = draw.box_grid(height, width)
    n = clock.n_frames
    half_period = int(rng.integers(8, 19))
    first = int(rng.integers(0, half_period))
    theta_max = rng.uniform(0.5, 0.9)
    t = np.arange(n)
    theta = theta_max * np.cos(np.pi * (t - first) / half_period)   # extremes on whole frames
    pivot_x, pivot_y = width / 2, 1.5
    length = (height - 5) * rng.uniform(0.7, 0.9)
    bob_x = pivot_x + length * np.sin(theta)
    bob_y = pivot_y + length * np.cos(theta)
    bob_r = width * rng.uniform(0.07, 0.11)
    rod = draw.segments(x, y, np.full((n, 1), pivot_x), np.full((n, 1), pivot_y), bob_x[:, None],
                        bob_y[:, None], half_width=0.6)
    alpha = np.maximum(rod, draw.disc(x, y, bob_x, bob_y, bob_r))
    extremes = np.arange(first, n, half_period)

    sr = clock.sample_rate
    click_hz = rng.uniform(2500, 4500)
    m = int(0.04 * sr)
    tt = np.arange(m) / sr
    template = (np.sin(2 * np.pi * click_hz * tt) * np.exp(-tt / 0.005)
                + 0.6 * synth.band_noise(rng, m, sr, 3000, 7000) * np.exp(-tt / 0.0015))
    tock = (np.sin(2 * np.pi * 0.8 * click_hz * tt) * np.exp(-tt / 0.005)
            + 0.6 * synth.band_noise(rng, m, sr, 3000, 7000) * np.exp(-tt / 0.0015))
    right = theta[extremes] > 0
    wave = (synth.place_events(template, clock.onsets(extremes[~right]), np.ones((~right).sum()), clock.n_samples)
            + synth.place_events(tock, clock.onsets(extremes[right]), np.ones(right.sum()), clock.n_samples))
    return SourceTrack(alpha, _constant_rgb(random_colour(rng), clock), wave, _impulses(extremes, "extreme"),
                       {"click_hz": click_hz, "half_period_frames": half_period})


def wheel(rng, width, height, clock) -> SourceTrack:
    """A spinning wheel with spokes; a harmonic hum whose pitch follows the spin speed."""
    x, y = draw.box_grid(height, width)
    n = clock.n_frames
    radius = min(width, height) * rng.uniform(0.32, 0.45)
    cx, cy = np.full(n, width / 2), np.full(n, height / 2)
    max_speed = 0.45                          # rad/frame: below the 3-spoke aliasing limit
    speed = synth.smooth_random_curve(rng, n, 5, 0.04, max_speed)
    angle = np.cumsum(speed) + rng.uniform(0, 2 * np.pi)
    spoke_angles = angle[:, None] + np.arange(3)[None, :] * (2 * np.pi / 3)
    ends_x = cx[:, None] + radius * np.cos(spoke_angles)
    ends_y = cy[:, None] + radius * np.sin(spoke_angles)
    spokes = draw.segments(x, y, np.broadcast_to(cx[:, None], ends_x.shape),
                           np.broadcast_to(cy[:, None], ends_y.shape), ends_x, ends_y, half_width=0.7)
    rim = np.clip(draw.disc(x, y, cx, cy, radius + 0.8) - draw.disc(x, y, cx, cy, radius - 0.8), 0, 1)
    alpha = np.maximum(spokes, rim)

    sr = clock.sample_rate
    base_hz = rng.uniform(70, 140)
    relative = speed / max_speed
    pitch = base_hz * (1 + 1.5 * synth.frames_to_samples(relative, clock.samples_per_frame, clock.n_samples))
    loud = 0.4 + 0.6 * synth.frames_to_samples(relative, clock.samples_per_frame, clock.n_samples)
    phase = 2 * np.pi * np.cumsum(pitch) / sr
    hum = sum(np.sin(k * phase) / k for k in range(1, 6)) * loud
    return SourceTrack(alpha, _constant_rgb(random_colour(rng), clock), hum,
                       (("spinning", 0, n),), {"hum_base_hz": base_hz},
                       {"speed": relative.astype(np.float32)})


def bell(rng, width, height, clock) -> SourceTrack:
    """A bell that is shaken now and then; an inharmonic ringing tone from each shake."""
    x, y = draw.box_grid(height, width)
    n = clock.n_frames
    shakes = synth.random_intervals(rng, n, 15, 40, first_max=20)
    t = np.arange(n)
    swing = np.zeros(n)
    for frame in shakes:
        since = t - frame
        swing += np.where(since >= 0, np.sin(2 * np.pi * since / 4.0) * np.exp(-np.maximum(since, 0) / 3.0), 0)
    size = min(width, height) * rng.uniform(0.3, 0.42)
    cx = width / 2 + size * 0.45 * swing
    cy = np.full(n, height * 0.45)
    dome = draw.disc(x, y, cx, cy, size * 0.55)
    body = draw.rectangle(x, y, cx - size * 0.55, cy, cx + size * 0.55, cy + size * 0.6)
    lip = draw.rectangle(x, y, cx - size * 0.75, cy + size * 0.55, cx + size * 0.75, cy + size * 0.75)
    alpha = np.maximum(np.maximum(dome, body), lip)

    sr = clock.sample_rate
    f0 = rng.uniform(400, 1100)
    tau = rng.uniform(0.3, 0.7)
    m = int(1.5 * sr)
    tt = np.arange(m) / sr
    ratios, weights = (1.0, 2.0, 2.76, 5.40, 8.93), (1.0, 0.6, 0.4, 0.25, 0.15)
    template = sum(w * np.sin(2 * np.pi * f0 * r * tt) * np.exp(-tt * (1 + 0.5 * k) / tau)
                   for k, (r, w) in enumerate(zip(ratios, weights)) if f0 * r < 0.45 * sr)
    template = template * np.minimum(1.0, tt / 0.002)                # 2 ms strike, no click
    wave = synth.place_events(template, clock.onsets(shakes), rng.uniform(0.7, 1.0, len(shakes)), clock.n_samples)
    return SourceTrack(alpha, _constant_rgb(random_colour(rng), clock), wave, _impulses(shakes, "shake"),
                       {"ring_hz": f0, "decay_s": tau})


def walker(rng, width, height, clock, variant: str = "gravel") -> SourceTrack:
    """A stick figure walking to and fro; a footstep each time a foot lands (widest stride):
    a crunch on gravel or a hollow knock on wood. The picture is the same for both."""
    x, y = draw.box_grid(height, width)
    n = clock.n_frames
    period = int(rng.integers(7, 14))
    first = int(rng.integers(0, period))
    t = np.arange(n)
    stride = np.abs(np.cos(np.pi * (t - first) / period))          # 1 exactly on step frames
    travel = np.cumsum(np.full(n, rng.uniform(0.2, 0.5)))
    span = width - 8.0
    bounce = (travel + rng.uniform(0, span)) % (2 * span)
    hip_x = 4 + np.where(bounce < span, bounce, 2 * span - bounce)
    leg = height * 0.3
    hip_y = height - 1 - leg * (0.92 + 0.08 * (1 - stride))       # body dips on foot strike
    feet_dx = leg * 0.55 * stride
    neck_y = hip_y - height * 0.3
    head_r = height * 0.08
    limbs = draw.segments(
        x, y,
        np.stack([hip_x, hip_x, hip_x], 1), np.stack([hip_y, hip_y, hip_y], 1),
        np.stack([hip_x - feet_dx, hip_x + feet_dx, hip_x], 1),
        np.stack([np.full(n, height - 1.0), np.full(n, height - 1.0), neck_y], 1), half_width=0.8)
    alpha = np.maximum(limbs, draw.disc(x, y, hip_x, neck_y - head_r, head_r))
    steps = np.arange(first, n, period)

    rgb = _constant_rgb(random_colour(rng), clock)   # drawn before the sound: variants look alike
    gains = rng.uniform(0.7, 1.0, len(steps))
    template, params = _crunch(rng, clock.sample_rate) if variant == "gravel" else _knock(rng, clock.sample_rate)
    wave = synth.place_events(template, clock.onsets(steps), gains, clock.n_samples)
    return SourceTrack(alpha, rgb, wave, _impulses(steps, "step"),
                       {**params, "step_period_frames": period})


def _crunch(rng, sr) -> tuple[np.ndarray, dict]:
    """A step on gravel: a burst of tiny bright grains over ~0.1 s, on a soft low thump."""
    m = int(0.18 * sr)
    tt = np.arange(m) / sr
    low = rng.uniform(1200, 2500)
    grain = synth.band_noise(rng, int(0.006 * sr), sr, low, min(7500.0, low * 4)) * np.exp(
        -np.arange(int(0.006 * sr)) / (0.0015 * sr))
    spread = rng.uniform(0.06, 0.11)
    onsets = np.sort((rng.beta(1.5, 3.0, 28) * spread * sr).astype(int))
    grains = synth.place_events(grain, onsets, rng.uniform(0.3, 1.0, len(onsets)), m)
    thump = 0.4 * np.sin(2 * np.pi * 80 * tt) * np.exp(-tt / 0.02)
    return 0.6 * grains + thump, {"crunch_low_hz": low, "crunch_spread_s": spread}


def _knock(rng, sr) -> tuple[np.ndarray, dict]:
    """A step on wooden boards: a hollow resonant knock with a short click on top."""
    m = int(0.2 * sr)
    tt = np.arange(m) / sr
    f1 = rng.uniform(140, 260)
    tau = rng.uniform(0.03, 0.06)
    modes = sum(w * np.sin(2 * np.pi * f1 * r * tt) * np.exp(-tt * r ** 0.5 / tau)
                for r, w in ((1.0, 1.0), (2.6, 0.5), (4.1, 0.25)))
    click = synth.band_noise(rng, m, sr, 1500, 4000) * np.exp(-tt / 0.003) * 0.3
    return (modes + click) * np.minimum(1.0, tt / 0.001), {"knock_hz": f1, "decay_s": tau}


# Sound variants the picture cannot tell apart: only the caption (or x̃) says which one plays.
VARIANTS: dict[str, tuple[str, ...]] = {"ball": ("rubber", "metal"), "walker": ("gravel", "wood")}

SOURCE_KINDS = {
    "ball": ball,
    "lamp": lamp,
    "rain": rain,
    "flag": flag,
    "pendulum": pendulum,
    "wheel": wheel,
    "bell": bell,
    "walker": walker,
}
