"""The embedded model's training data: long mini-world scenes cut into 8 s windows, captioned
the way VGGSound is, and kept in memory as features (nothing but the picture goes through a
file, and it does so as an mp4 like a user's video, so the features see the same compression).

For each window of picture (2-4 sources, some off screen, some sounding for part of the clip,
some in a variant the picture cannot show), the base network learns from
  * one example per audible source: that source's caption over a mixture in which it
    dominates and the other sources play 6-18 dB lower (the labelled sound of a VGGSound clip
    over its background). The caption says which of the sounds leads, so it carries
    information the picture alone does not; the target is never the isolated stem;
  * sometimes a fused caption ("rain falling and footsteps on wood") over an even mixture;
  * sometimes one source's stem alone with its caption and no picture (an AudioCaps-style
    audio-text pair).
The NAG ControlNet learns from pairs of windows of the same scene that do not overlap: the
target is the scene's natural mixture under one window's picture, the condition the mixture of
another window normalized to -20 LUFS, as x̃ is at inference. Scenes last 20 s so that two 8 s
windows fit at random offsets.
The loudness ControlNet learns from the base's examples, most of them shaped by a drawn
loudness envelope (a smooth gain that knows nothing of the picture, as a hand-drawn curve does
not), each with its loudness per latent frame as the condition: it learns that a curve sets the
level of the sounds the picture and caption call for, not which sounds there are.
"""

from __future__ import annotations

import json
import signal
import tempfile
import time
from dataclasses import asdict, dataclass, fields, replace
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from safetensors.torch import load_file

from stepfoley.engine import mixing
from stepfoley.engine.errors import InvalidInputError
from stepfoley.engine.loudness_curve import measured_condition
from stepfoley.engine.session import CONDITION_LUFS  # x̃'s level: what the ControlNet hears at generation
from stepfoley.lab.training.objectives import Batch

WINDOW_S = 8.0
# Window offsets on a 0.16 s grid: a whole number of video frames (40 ms) and of latent frames (32 ms).
OFFSET_GRID_S = 0.16
AUDIBLE_DBFS = -50.0  # a source quieter than this (RMS) over a window is not in it
# 60 dB under a target (-26 to -16 LUFS) the other sources are inaudible: further says nothing more.
DOMINANCE_DB_MOST = 60.0


@dataclass(frozen=True)
class DataRecipe:
    scenes: int = 480  # long scenes of 1-4 sources; the last `held_out_scenes` only measure
    held_out_scenes: int = 24
    scene_seconds: float = 20.0
    windows_per_scene: int = 3  # two of them at least 8 s apart, so every scene gives ControlNet pairs
    dominance_db: tuple[float, float] = (6.0, 18.0)  # how much lower the uncaptioned sources play
    fused_prob: float = 0.4  # per window: a fused caption over an even mixture
    stem_alone_prob: float = 0.6  # per window: one source alone, its caption, no picture
    generic_caption_prob: float = 0.3  # "footsteps" rather than "footsteps on gravel"
    target_lufs: tuple[float, float] = (-26.0, -16.0)  # the level of every target mixture
    # The loudness ControlNet's examples: this share of them under a drawn envelope, its points
    # this far apart (s) and spanning this much (dB); the rest at their own loudness.
    shaped_prob: float = 0.75
    shaped_point_s: tuple[float, float] = (0.5, 3.0)
    shaped_span_db: tuple[float, float] = (6.0, 36.0)
    seed: int = 0

    def is_held_out(self, scene: int) -> bool:
        """Whether scene `scene` (0-based) only measures held-out losses: the last held_out_scenes."""
        return scene >= self.scenes - self.held_out_scenes


# Raised whenever the examples drawn for the same recipe change: 2: no stem alone from a held-out scene.
DATA_VERSION = "2"


class StaleFeaturesError(InvalidInputError):
    """A features file written by an older data recipe: it lacks tensors this one needs."""


@dataclass
class EmbeddedData:
    """Features of every window and example, as tensors.

    windows:  clip (W, 64, 96), sync (W, 192, 64); scene (W,) and offset (W,) seconds;
              natural (W, N, C) latent of the scene's natural mixture under the window at a
              target level; condition (W, N, C) the same mixture at -20 LUFS (x̃ of another
              window); audible (W,) bool: the natural mixture is not silence.
    examples: latent (M, N, C) target mixture; window (M,) index into the windows or -1 (no
              picture); text (M,) index into texts; shaped (M, N, C) the same target under a
              drawn loudness envelope (or as it is), what the loudness ControlNet learns to make;
              loudness (M, N) the shaped target's loudness per latent frame on that ControlNet's
              scale (engine.loudness_curve.measured_condition).
    texts:    (T, 77, Dt) text features of every distinct caption.
    held_out (W,) bool: the window's scene is kept for held-out losses only.
    """

    clip: torch.Tensor
    sync: torch.Tensor
    scene: torch.Tensor
    offset: torch.Tensor
    natural: torch.Tensor
    condition: torch.Tensor
    audible: torch.Tensor
    held_out: torch.Tensor
    latent: torch.Tensor
    window: torch.Tensor
    text: torch.Tensor
    texts: torch.Tensor
    shaped: torch.Tensor
    loudness: torch.Tensor

    def save(self, path: Path, metadata: dict[str, str]) -> Path:
        from stepfoley.engine.checkpoints import save_safetensors_atomic

        tensors = {f.name: getattr(self, f.name).contiguous() for f in fields(self)}
        return save_safetensors_atomic(tensors, path, {**metadata, "data_version": DATA_VERSION}, overwrite=True)

    @classmethod
    def load(cls, path: Path, codec_config=None) -> "EmbeddedData":
        cls.check_current(path, codec_config)
        tensors = load_file(str(path))
        return cls(**{f.name: tensors[f.name] for f in fields(cls)})

    @classmethod
    def check_current(cls, path: Path, codec_config=None, recipe: "DataRecipe | None" = None) -> None:
        """Raises StaleFeaturesError when the file lacks a tensor this recipe needs, was made by
        an older version of the data (DATA_VERSION) or, given them, by another codec
        (`codec_config`) or another recipe (reads its header only: a features file is hundreds
        of MB)."""
        from safetensors import safe_open

        from stepfoley.engine.embedded.model import codec_config_of

        with safe_open(str(path), "pt") as f:
            missing = [f_.name for f_ in fields(cls) if f_.name not in f.keys()]
            meta = f.metadata() or {}
        if missing:
            raise StaleFeaturesError(f"{path} was made by an older recipe (it has no {', '.join(missing)}); "
                                     "delete it and train again to rebuild it.")
        if meta.get("data_version") != DATA_VERSION:
            raise StaleFeaturesError(f"{path} was made by an older version of the training data (before "
                                     "held-out scenes' stems were kept out of training).")
        if recipe is not None and meta.get("recipe") != json.dumps(asdict(recipe)):
            raise StaleFeaturesError(f"{path} was made for another data recipe (scenes, seed, ...).")
        if codec_config is not None and codec_config_of(meta) != codec_config:
            raise StaleFeaturesError(f"{path} holds latents of another audio codec than the model's; "
                                     "delete it and train again to rebuild it.")

    def latent_stats(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Per-channel mean and std (1, 1, C) over the base's training targets (held-out scenes'
        examples are kept out of these too): latent_mean / latent_std."""
        latent = self.latent[self.training_examples()]
        flat = latent.reshape(-1, latent.shape[-1])
        return flat.mean(0).view(1, 1, -1), flat.std(0).clamp_min(1e-3).view(1, 1, -1)

    def training_examples(self) -> torch.Tensor:
        """Indices of the examples the base trains on (not from held-out scenes)."""
        on_picture = self.window >= 0
        held = torch.zeros_like(on_picture)
        held[on_picture] = self.held_out[self.window[on_picture]]
        return torch.nonzero(~held).flatten()

    def controlnet_pairs(self, held_out: bool = False) -> torch.Tensor:
        """(P, 2) pairs (target window, condition window) of the same scene, at least 8 s apart,
        both audible; from training scenes, or from held-out ones."""
        same = self.scene[:, None] == self.scene[None, :]
        apart = (self.offset[:, None] - self.offset[None, :]).abs() >= WINDOW_S - 1e-6
        usable = self.audible & (self.held_out == held_out)
        ok = same & apart & usable[:, None] & usable[None, :]
        return torch.nonzero(ok)


def window_offsets(rng: np.random.Generator, duration: float, count: int) -> list[float]:
    """`count` window starts on the offset grid: the first two at least a window apart."""
    last = duration - WINDOW_S
    if last < WINDOW_S:
        raise InvalidInputError(f"Scenes of {duration:g} s are too short for two windows {WINDOW_S:g} s apart.")
    grid = lambda x: round(round(x / OFFSET_GRID_S) * OFFSET_GRID_S, 6)  # noqa: E731
    first = grid(rng.uniform(0, last - WINDOW_S))
    second = grid(rng.uniform(first + WINDOW_S, last))
    second = min(max(second, first + WINDOW_S), last)
    return [first, second] + [grid(rng.uniform(0, last)) for _ in range(count - 2)]


def _rms_dbfs(x: np.ndarray) -> float:
    return 10 * np.log10(np.mean(np.square(x, dtype=np.float64)) + 1e-20)


def _at_loudness(wave: np.ndarray, sr: int, lufs: float) -> np.ndarray | None:
    """`wave` (S,) normalized to `lufs`, then lowered if a peak would pass -1 dBFS; None for silence."""
    level = mixing.integrated_loudness(wave[None], sr)
    if not np.isfinite(level):
        return None
    out = wave * 10 ** ((lufs - level) / 20)
    peak = np.abs(out).max()
    return (out * (0.89 / peak) if peak > 0.89 else out).astype(np.float32)


def loudness_envelope(rng: np.random.Generator, length: int, sample_rate: int, recipe: DataRecipe) -> np.ndarray:
    """A drawn gain (length,) float64 in (0, 1]: points `shaped_point_s` apart at levels spread
    over a `shaped_span_db` range, joined linearly in dB, the loudest at 0 dB."""
    seconds = length / sample_rate
    times = [0.0]
    while times[-1] < seconds:
        times.append(times[-1] + rng.uniform(*recipe.shaped_point_s))
    levels = -rng.uniform(0.0, 1.0, len(times)) * rng.uniform(*recipe.shaped_span_db)
    db = np.interp(np.arange(length) / sample_rate, times, levels)
    return 10 ** ((db - db.max()) / 20)


def _shaped(rng: np.random.Generator, wave: np.ndarray, sample_rate: int, recipe: DataRecipe) -> np.ndarray:
    """A target for the loudness ControlNet: `wave` under a drawn envelope at a target level
    (`shaped_prob` of the time), else `wave` as it is."""
    if rng.uniform() >= recipe.shaped_prob:
        return wave
    shaped = _at_loudness(wave * loudness_envelope(rng, len(wave), sample_rate, recipe), sample_rate,
                          rng.uniform(*recipe.target_lufs))
    return wave if shaped is None else shaped


def scene_features(model, recipe: DataRecipe, index: int, first_seed: int) -> dict:
    """Everything one scene contributes, as a picklable dict: its windows' tensors and its
    examples (latent, window number within the scene or -1, caption)."""
    from stepfoley.engine.embedded.encoders import FRAME_SIZE, SYNC_FPS
    from stepfoley.lab.miniworld import CAPTIONS, make_scene, scene_caption
    from stepfoley.lab.miniworld.writer import encode_mp4
    from stepfoley.engine.video import read_region

    rng = np.random.default_rng(np.random.SeedSequence([recipe.seed, index, 271828]))
    scene = make_scene(first_seed + index, n_sources=int(rng.choice([1, 2, 2, 3, 3, 4])),
                       duration=recipe.scene_seconds)
    with tempfile.TemporaryDirectory(prefix="stepfoley-data-") as temp:
        video = Path(temp) / "scene.mp4"
        encode_mp4(video, scene.frames, scene.fps, None, scene.sample_rate)
        frames = read_region(video, 0.0, scene.duration, SYNC_FPS, FRAME_SIZE)

    sr, codec = model.sample_rate, model.codec
    length = int(round(WINDOW_S * sr))
    encode = lambda waves: codec.encode(torch.from_numpy(np.stack(waves)).to(model.device)).cpu()  # noqa: E731

    def caption(k: int) -> str:
        options = CAPTIONS[scene.kinds[k]] if rng.uniform() < recipe.generic_caption_prob else scene.captions[k]
        return options[int(rng.integers(len(options)))]

    windows = {k: [] for k in ("clip", "sync", "offset", "natural", "condition", "audible")}
    examples = []  # (wave, window, caption)
    for w, offset in enumerate(window_offsets(rng, scene.duration, recipe.windows_per_scene)):
        f0, a = int(round(offset * scene.fps)), int(round(offset * sr))
        clip_f, sync_f = model.video_encoder.encode_frames(frames[f0:f0 + int(round(WINDOW_S * scene.fps))], WINDOW_S)
        stems = scene.stems[:, a:a + length]
        target = _at_loudness(stems.sum(0), sr, rng.uniform(*recipe.target_lufs))
        condition = _at_loudness(stems.sum(0), sr, CONDITION_LUFS)
        audible = target is not None and condition is not None
        silent = np.zeros(length, np.float32)
        natural, conditioned = encode([target if audible else silent, condition if audible else silent])
        for key, value in (("clip", clip_f[0].cpu()), ("sync", sync_f[0].cpu()), ("offset", offset),
                           ("natural", natural), ("condition", conditioned), ("audible", audible)):
            windows[key].append(value)

        heard = [i for i in range(len(stems)) if _rms_dbfs(stems[i]) > AUDIBLE_DBFS]
        for k in heard:  # the captioned source leads, the others play lower
            gains = 10 ** (-rng.uniform(*recipe.dominance_db, len(stems)) / 20)
            gains[k] = 1.0
            examples.append(((gains[:, None] * stems).sum(0), w, caption(k)))
        if len(heard) > 1 and rng.uniform() < recipe.fused_prob:
            gains = 10 ** (rng.uniform(-3, 3, len(stems)) / 20)
            examples.append(((gains[:, None] * stems).sum(0), w,
                             scene_caption([[caption(k)] for k in heard], [0] * len(heard))))
        if heard and rng.uniform() < recipe.stem_alone_prob:
            k = heard[int(rng.integers(len(heard)))]
            examples.append((stems[k], -1, caption(k)))

    kept = [(_at_loudness(wave, sr, rng.uniform(*recipe.target_lufs)), w, c) for wave, w, c in examples]
    kept = [(wave, w, c) for wave, w, c in kept if wave is not None]
    # its own stream, so the base's examples are the same with or without shaping
    shape_rng = np.random.default_rng(np.random.SeedSequence([recipe.seed, index, 161803]))
    shaped = [_shaped(shape_rng, wave, sr, recipe) for wave, _, _ in kept]
    # a stem alone belongs to no window, so it would be trained on whatever its scene: none from a
    # held-out scene (its stems lead that scene's held-out examples). Dropped after every draw,
    # so the scene's other examples are what they were.
    if recipe.is_held_out(index):
        shaped = [s for s, (_, w, _) in zip(shaped, kept) if w >= 0]
        kept = [example for example in kept if example[1] >= 0]
    latent = encode([wave for wave, _, _ in kept]) if kept else None
    return {
        "windows": {k: (torch.stack(v) if isinstance(v[0], torch.Tensor) else v) for k, v in windows.items()},
        "latent": latent,
        "shaped": None if latent is None else encode(shaped),
        "loudness": None if latent is None else torch.from_numpy(np.stack(
            [measured_condition(wave, sr, latent.shape[1]) for wave in shaped])),
        "window": [w for _, w, _ in kept],
        "captions": [c for _, _, c in kept],
    }


_worker_model = None


def _worker_init(threads: int, codec_config) -> None:
    global _worker_model
    from stepfoley.engine.embedded.codec import MelCodec
    from stepfoley.engine.embedded.model import build_embedded_model

    torch.set_num_threads(threads)
    # its encoders, no weights needed; the codec of the model the data is for
    _worker_model = replace(build_embedded_model(random_weights=True), codec=MelCodec(codec_config))


def _worker_scene(task) -> dict:
    recipe, index, first_seed = task
    with torch.inference_mode():
        return scene_features(_worker_model, recipe, index, first_seed)


@torch.inference_mode()
def build_embedded_data(model, recipe: DataRecipe, first_seed: int, workers: int = 1, log=print) -> EmbeddedData:
    """Render `recipe.scenes` scenes (seeds first_seed, first_seed + 1, ...) in `workers`
    processes, pass each picture through an mp4 like a user's video, and collect the features of
    every window and example. Captions are encoded here, once each."""
    import multiprocessing

    tasks = [(recipe, i, first_seed) for i in range(recipe.scenes)]
    parts = {k: [] for k in ("clip", "sync", "scene", "offset", "natural", "condition", "audible", "held_out")}
    latents, shaped, loudness, windows, texts = [], [], [], [], []
    caption_index: dict[str, int] = {}
    start = time.perf_counter()
    if workers > 1:
        context = multiprocessing.get_context("spawn")
        # Ctrl-C goes to the whole process group: the workers start with it ignored (a worker
        # that took it mid-scene would leave the pool waiting for it) and the parent stops them
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            pool = context.Pool(workers, initializer=_worker_init,
                                initargs=(max(1, torch.get_num_threads() // workers), model.codec.config))
        finally:
            signal.signal(signal.SIGINT, previous)
        results = pool.imap(_worker_scene, tasks)
    else:
        pool, results = None, (scene_features(model, *task) for task in tasks)
    log(f"data: rendering {recipe.scenes} scenes in {max(workers, 1)} process{'es' if workers > 1 else ''}")
    finished = False
    try:
        for i, part in enumerate(results):
            base = len(parts["scene"])
            count = len(part["windows"]["offset"])
            for key, value in part["windows"].items():
                parts[key].extend(value if isinstance(value, list) else list(value))
            parts["scene"].extend([i] * count)
            parts["held_out"].extend([recipe.is_held_out(i)] * count)
            if part["latent"] is not None:
                latents.append(part["latent"])
                shaped.append(part["shaped"])
                loudness.append(part["loudness"])
                windows.extend(base + w if w >= 0 else -1 for w in part["window"])
                for caption in part["captions"]:
                    if caption not in caption_index:
                        caption_index[caption] = len(caption_index)
                        texts.append(model.text_encoder.encode([caption])[0].cpu())
                    parts.setdefault("text", []).append(caption_index[caption])
            if (i + 1) % 50 == 0:
                log(f"data: {i + 1}/{recipe.scenes} scenes, {len(windows)} examples, "
                    f"{time.perf_counter() - start:.0f} s")
        finished = True
    finally:
        if pool is not None:
            if finished:
                pool.close()
            else:  # stopped (Ctrl-C, an error): the scenes still rendering are not waited for
                pool.terminate()
            pool.join()
    as_tensor = lambda values, dtype: torch.tensor(values, dtype=dtype)  # noqa: E731
    return EmbeddedData(
        clip=torch.stack(parts["clip"]), sync=torch.stack(parts["sync"]), scene=as_tensor(parts["scene"], torch.long),
        offset=as_tensor(parts["offset"], torch.float32), natural=torch.stack(parts["natural"]),
        condition=torch.stack(parts["condition"]), audible=as_tensor(parts["audible"], torch.bool),
        held_out=as_tensor(parts["held_out"], torch.bool), latent=torch.cat(latents),
        window=as_tensor(windows, torch.long), text=as_tensor(parts["text"], torch.long), texts=torch.stack(texts),
        shaped=torch.cat(shaped), loudness=torch.cat(loudness))


# --- batches -------------------------------------------------------------------------------------


def example_batch(data: EmbeddedData, normalize, idx: torch.Tensor, shaped: bool = False) -> Batch:
    """The examples `idx` as a batch: their targets, or (`shaped`) their shaped targets with
    the loudness of each as the condition."""
    window = data.window[idx]
    picture = window.clamp_min(0)  # examples without picture take the empty video in the objective
    target, loudness = (data.shaped[idx], data.loudness[idx]) if shaped else (data.latent[idx], None)
    return Batch(normalize(target), data.clip[picture], data.sync[picture], data.texts[data.text[idx]], window >= 0,
                 loudness=loudness)


def base_batches(data: EmbeddedData, normalize, batch_size: int, seed: int, rank: int = 0,
                 world: int = 1, shaped: bool = False) -> Iterator[Batch]:
    """Random batches of the base's examples (this rank's share), without held-out scenes;
    `shaped`: the loudness ControlNet's (example_batch)."""
    g = torch.Generator().manual_seed(seed * 7919 + rank)
    own = data.training_examples()[rank::world]
    while True:
        yield example_batch(data, normalize, own[torch.randint(len(own), (batch_size,), generator=g)], shaped)


def controlnet_batch(data: EmbeddedData, normalize, pairs: torch.Tensor, condition_windows: torch.Tensor | None = None
                     ) -> Batch:
    """The ControlNet's examples for (target window, condition window) pairs: the natural
    mixture under the target's picture, the other window's mixture at -20 LUFS as x̃, no text."""
    target, condition = pairs[:, 0], pairs[:, 1] if condition_windows is None else condition_windows
    empty_text = torch.zeros(len(target), *data.texts.shape[1:])  # replaced by the empty caption
    return Batch(normalize(data.natural[target]), data.clip[target], data.sync[target], empty_text,
                 torch.ones(len(target), dtype=torch.bool), cond_latent=normalize(data.condition[condition]))


def controlnet_batches(data: EmbeddedData, normalize, batch_size: int, seed: int, rank: int = 0,
                       world: int = 1) -> Iterator[Batch]:
    """Random batches of non-overlapping window pairs of the same training scene (this rank's share)."""
    g = torch.Generator().manual_seed(seed * 7919 + 17 + rank)
    pairs = data.controlnet_pairs()[rank::world]
    if len(pairs) == 0:
        raise InvalidInputError("No pair of audible, non-overlapping windows to train the ControlNet on.")
    while True:
        yield controlnet_batch(data, normalize, pairs[torch.randint(len(pairs), (batch_size,), generator=g)])


@torch.no_grad()
def held_out_controlnet_losses(net, controlnet, data: EmbeddedData, batch_size: int = 16,
                               seed: int = 1234) -> dict[str, float]:
    """The ControlNet's flow loss on held-out scenes with no condition (the base's u(V, ∅)), the
    condition from the same clip (what it is for), and a condition from another clip (it should
    not help), on the same noise and times: a paired comparison."""
    from stepfoley.lab.training.objectives import controlnet_flow_loss

    pairs = data.controlnet_pairs(held_out=True)
    if len(pairs) == 0:
        raise InvalidInputError("No held-out pair of windows: raise DataRecipe.held_out_scenes.")
    others = _other_clip_conditions(data, pairs)
    totals = {"no_condition": 0.0, "same_clip": 0.0, "other_clip": 0.0}
    for start in range(0, len(pairs), batch_size):
        chunk = slice(start, start + batch_size)
        same = controlnet_batch(data, net.normalize, pairs[chunk])
        other = controlnet_batch(data, net.normalize, pairs[chunk], condition_windows=others[chunk])
        for name, cn, batch in (("no_condition", None, same), ("same_clip", controlnet, same),
                                ("other_clip", controlnet, other)):
            g = torch.Generator().manual_seed(seed + start)
            totals[name] += float(controlnet_flow_loss(net, cn, batch, 0.0, g)) * len(pairs[chunk])
    return {k: v / len(pairs) for k, v in totals.items()}


def held_out_examples(data: EmbeddedData) -> torch.Tensor:
    """Indices of the examples on a held-out scene's picture."""
    on_picture = torch.nonzero(data.window >= 0).flatten()
    return on_picture[data.held_out[data.window[on_picture]]]


@torch.no_grad()
def held_out_loudness_losses(net, loudness_control, data: EmbeddedData, batch_size: int = 16,
                             seed: int = 4321) -> dict[str, float]:
    """The loudness ControlNet's flow loss on held-out examples (their shaped targets) with no
    curve (the base alone), the target's own curve (what it is for) and another example's curve
    (it should not help), on the same noise and times: a paired comparison."""
    from stepfoley.lab.training.objectives import loudness_flow_loss

    examples = held_out_examples(data)
    if len(examples) < 2:
        raise InvalidInputError("Too few held-out examples: raise DataRecipe.held_out_scenes.")
    others = examples.roll(1)
    totals = {"no_curve": 0.0, "own_curve": 0.0, "other_curve": 0.0}
    for start in range(0, len(examples), batch_size):
        idx, other = examples[start:start + batch_size], others[start:start + batch_size]
        batch = example_batch(data, net.normalize, idx, shaped=True)
        swapped = Batch(**{**batch.__dict__, "loudness": data.loudness[other]})
        for name, control, b in (("no_curve", None, batch), ("own_curve", loudness_control, batch),
                                 ("other_curve", loudness_control, swapped)):
            g = torch.Generator().manual_seed(seed + start)
            totals[name] += float(loudness_flow_loss(net, control, b, 0.0, g)) * len(idx)
    return {k: v / len(examples) for k, v in totals.items()}


def _other_clip_conditions(data: EmbeddedData, pairs: torch.Tensor) -> torch.Tensor:
    """For each pair, the condition window of a pair from another scene."""
    scenes = data.scene[pairs[:, 1]]
    out = []
    for i, scene in enumerate(scenes):
        candidates = torch.nonzero(scenes != scene).flatten()
        if len(candidates) == 0:
            raise InvalidInputError("The held-out pairs all come from one scene: raise DataRecipe.held_out_scenes.")
        out.append(pairs[candidates[i % len(candidates)], 1])
    return torch.stack(out)
