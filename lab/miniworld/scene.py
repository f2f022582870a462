"""A mini-world scene: 64x64 frames at 25 fps, 16 kHz mono stems, mixture, captions, events.

`make_scene` is a pure function of its arguments: the same seed gives the same scene, bit for
bit. Every source is drawn inside its own box (a quarter of the frame, jittered) so sources can
share the screen, and every sound onset sits on the sample where its event frame starts.

Like real footage, a scene holds things the picture does not say: a source may be off screen
(heard, never drawn), may be there for only part of the clip (drawn and heard only then), and
may come in a sound variant the picture cannot tell apart (footsteps on gravel or on wood).
`SceneOptions` sets how often; `PLAIN` turns all of it off.
"""

from dataclasses import dataclass

import numpy as np

from stepfoley.engine.errors import InvalidInputError
from .captions import scene_caption, source_captions
from .sources import SOURCE_KINDS, VARIANTS, Clock
from .synth import gate_to_samples

FPS = 25
SAMPLE_RATE = 16000
FRAME_SIZE = 64
MAX_SOURCES = 4  # a drawn scene holds 2 to this many sources


@dataclass(frozen=True)
class Event:
    """One entry of the timeline: frames [start_frame, end_frame) of one source."""

    source: int
    kind: str
    name: str
    start_frame: int
    end_frame: int

    @property
    def start_s(self) -> float:
        return self.start_frame / FPS

    @property
    def end_s(self) -> float:
        return self.end_frame / FPS

    @property
    def start_sample(self) -> int:
        return self.start_frame * (SAMPLE_RATE // FPS)


@dataclass(frozen=True)
class SceneOptions:
    offscreen_prob: float = 0.2  # a source is heard but never drawn
    partial_prob: float = 0.35  # a source is drawn and heard for only part of the clip
    partial_fraction: tuple[float, float] = (0.3, 0.75)  # of the clip, when partial
    variants: bool = True  # pick a sound variant where the kind has several (else the first)


PLAIN = SceneOptions(offscreen_prob=0.0, partial_prob=0.0)


@dataclass(frozen=True)
class Scene:
    seed: int
    duration: float
    frames: np.ndarray          # (T, 64, 64, 3) uint8
    stems: np.ndarray           # (n_sources, S) float32; mixture == stems.sum(0)
    mixture: np.ndarray         # (S,) float32
    kinds: tuple                # kind of each source
    boxes: tuple                # (x0, y0, width, height) of each source, in pixels
    captions: tuple             # paraphrases of each source's kind
    caption: str                # one caption for the whole mixture
    events: tuple               # Event, sorted by start frame then source
    params: tuple               # per-source sound/visual parameters (dicts)
    controls: tuple             # per-source per-frame control curves (dicts of (T,))
    variants: tuple = ()        # sound variant of each source ("" where the kind has one sound)
    visible: tuple = ()         # whether each source is drawn at all
    active: tuple = ()          # (start_frame, end_frame) each source is drawn and heard
    fps: int = FPS
    sample_rate: int = SAMPLE_RATE


def _clock(duration: float) -> Clock:
    if not (0.5 <= float(duration) <= 60.0):
        raise InvalidInputError(f"Scene duration {duration!r} s is out of range; use 0.5 to 60 seconds.")
    return Clock(int(round(duration * FPS)), FPS, SAMPLE_RATE)


def _background(rng: np.random.Generator, n_frames: int) -> np.ndarray:
    top, bottom = rng.uniform(0.0, 0.25, 3), rng.uniform(0.0, 0.25, 3)
    ramp = np.linspace(0, 1, FRAME_SIZE)[:, None, None]
    still = top * (1 - ramp) + bottom * ramp + rng.normal(0, 0.015, (FRAME_SIZE, FRAME_SIZE, 1))
    return np.broadcast_to(np.clip(still, 0, 1).astype(np.float32), (n_frames, FRAME_SIZE, FRAME_SIZE, 3)).copy()


def _quarter_boxes(rng: np.random.Generator, n: int) -> list[tuple[int, int, int, int]]:
    half = FRAME_SIZE // 2
    cells = rng.permutation(4)[:n]
    boxes = []
    for cell in cells:
        size = int(rng.integers(24, half + 1))
        x0 = (cell % 2) * half + int(rng.integers(0, half - size + 1))
        y0 = (cell // 2) * half + int(rng.integers(0, half - size + 1))
        boxes.append((int(x0), int(y0), size, size))
    return boxes


def _choose_kinds(rng, kinds, n_sources) -> tuple[str, ...]:
    if kinds is not None:
        kinds = tuple(kinds)
        unknown = [k for k in kinds if k not in SOURCE_KINDS]
        if unknown:
            raise InvalidInputError(f"Unknown source kind(s) {unknown}; choose from {sorted(SOURCE_KINDS)}.")
        if n_sources is not None and n_sources != len(kinds):
            raise InvalidInputError(f"n_sources={n_sources} but {len(kinds)} kinds were given; give one or match them.")
    else:
        n = int(rng.integers(2, MAX_SOURCES + 1)) if n_sources is None else int(n_sources)
        if not 1 <= n <= 4:
            raise InvalidInputError(f"n_sources={n_sources} is out of range; a scene holds 1 to 4 sources.")
        kinds = tuple(str(k) for k in rng.choice(sorted(SOURCE_KINDS), size=n, replace=False))
    if not 1 <= len(kinds) <= 4:
        raise InvalidInputError(f"{len(kinds)} sources requested; a scene holds 1 to 4 (one per quarter of the frame).")
    return kinds


def _choose_traits(rng, kinds, n_frames: int, options: SceneOptions, variants=None):
    """Per source: its sound variant (unless given), whether it is drawn, the frames it is active."""
    chosen, visible, active = [], [], []
    for i, kind in enumerate(kinds):
        choices = VARIANTS.get(kind, ("",))
        pick = str(choices[int(rng.integers(len(choices)))]) if options.variants else choices[0]
        if variants is not None:
            if variants[i] not in choices:
                raise InvalidInputError(f"A {kind} has no variant {variants[i]!r}; choose from {choices}.")
            pick = variants[i]
        chosen.append(pick)
        visible.append(bool(rng.uniform() >= options.offscreen_prob))
        if rng.uniform() < options.partial_prob:
            length = int(round(n_frames * rng.uniform(*options.partial_fraction)))
            start = int(rng.integers(0, n_frames - length + 1))
            active.append((start, start + length))
        else:
            active.append((0, n_frames))
    if not any(visible):
        visible[0] = True  # a scene always shows something
    return tuple(chosen), tuple(visible), tuple(active)


def _activity_gates(span: tuple[int, int], clock: Clock) -> tuple[np.ndarray, np.ndarray]:
    """Per-frame and per-sample gates that are 1 inside the active span (10 ms fades inside it)."""
    frames = np.zeros(clock.n_frames, dtype=bool)
    frames[span[0]:span[1]] = True
    samples = gate_to_samples(frames, clock.samples_per_frame, clock.n_samples, ramp=int(0.01 * clock.sample_rate))
    return frames, samples


def _render(seed: int, duration: float, kinds: tuple, boxes: list, layout_rng,
            options: SceneOptions = PLAIN, variants=None) -> Scene:
    clock = _clock(duration)
    frames = _background(layout_rng, clock.n_frames)
    variants, visible, active = _choose_traits(
        np.random.default_rng(np.random.SeedSequence([seed, 6151])), kinds, clock.n_frames, options, variants)
    stems, events, params, controls = [], [], [], []
    for index, (kind, (x0, y0, w, h)) in enumerate(zip(kinds, boxes)):
        # Each source has its own stream, so adding a source never changes the others.
        rng = np.random.default_rng(np.random.SeedSequence([seed, index, 8191]))
        extra = {"variant": variants[index]} if variants[index] else {}
        track = SOURCE_KINDS[kind](rng, w, h, clock, **extra)
        on_frames, on_samples = _activity_gates(active[index], clock)
        if visible[index]:
            alpha = (track.alpha * on_frames[:, None, None])[..., None]
            region = frames[:, y0:y0 + h, x0:x0 + w]
            frames[:, y0:y0 + h, x0:x0 + w] = region * (1 - alpha) + track.rgb[:, None, None, :] * alpha
        peak = np.max(np.abs(track.wave)) + 1e-12
        stems.append(track.wave * on_samples / peak * rng.uniform(0.2, 0.5))
        start, end = active[index]
        events.extend(Event(index, kind, name, max(s, start), min(e, end)) for name, s, e in track.events
                      if s < end and e > start)
        params.append(dict(track.params))
        controls.append(dict(track.controls))
    stems = np.stack(stems)
    mixture = stems.sum(0)
    headroom = 0.95 / max(0.95, float(np.max(np.abs(mixture))))   # scale all alike: stems still sum
    stems, mixture = (stems * headroom).astype(np.float32), (mixture * headroom).astype(np.float32)
    choices = layout_rng.integers(0, 1 << 16, len(kinds))
    captions = tuple(source_captions(k, v) for k, v in zip(kinds, variants))
    return Scene(
        seed=seed, duration=clock.n_frames / FPS,
        frames=np.round(np.clip(frames, 0, 1) * 255).astype(np.uint8),
        stems=stems, mixture=mixture, kinds=kinds, boxes=tuple(tuple(b) for b in boxes),
        captions=captions, caption=scene_caption(captions, choices),
        events=tuple(sorted(events, key=lambda e: (e.start_frame, e.source))),
        params=tuple(params), controls=tuple(controls), variants=variants, visible=visible, active=active)


def make_scene(seed: int, kinds=None, n_sources=None, duration: float = 8.0,
               options: SceneOptions = SceneOptions(), variants=None) -> Scene:
    """A scene of 2-4 sources (or the given kinds, one per source; `variants` likewise) drawn
    from `seed`, with off-screen, partly active and variant sources as `options` says (`PLAIN`:
    none of them)."""
    layout_rng = np.random.default_rng(np.random.SeedSequence([seed, 4099]))
    kinds = _choose_kinds(layout_rng, kinds, n_sources)
    return _render(seed, duration, kinds, _quarter_boxes(layout_rng, len(kinds)), layout_rng, options, variants)


def single_source_clip(seed: int, kind: str, duration: float = 8.0, variant: str | None = None) -> Scene:
    """One source alone, drawn large in the frame and active throughout: an audio-text (and
    video) training pair. `variant` None picks one at random."""
    layout_rng = np.random.default_rng(np.random.SeedSequence([seed, 7919]))
    kinds = _choose_kinds(layout_rng, (kind,), None)
    size = int(layout_rng.integers(44, FRAME_SIZE + 1))
    x0, y0 = (int(layout_rng.integers(0, FRAME_SIZE - size + 1)) for _ in range(2))
    return _render(seed, duration, kinds, [(x0, y0, size, size)], layout_rng, SceneOptions(0.0, 0.0),
                   None if variant is None else (variant,))
