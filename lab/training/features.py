"""Feature extraction for training, and the batch samplers of both phases.

A dataset list is JSON Lines, one clip per line, VGGSound-style or audio-text:

    {"video": "clips/abc.mp4", "audio": "clips/abc.wav", "caption": "a dog barks", "start": 0.0}
    {"audio": "audiocaps/xyz.wav", "caption": "rain on a tin roof"}

`audio` may be omitted when the video file carries the sound. Relative paths are relative to
the list's folder. The list is a regular file (or a link to one) of at most 1 GiB
(MAX_LIST_BYTES: some three million clips). Every clip is cut to the model's window (8 s)
from `start`, which lies within the clip's file; shorter clips are padded with silence.
Features are extracted once with the model's own encoders and codec and saved as
safetensors; training then only reads tensors.
"""

from __future__ import annotations

import errno
import hashlib
import json
import os
import re
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Iterator

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from stepfoley.atomic import write_atomically
from stepfoley.engine import mixing
from stepfoley.engine.errors import InvalidInputError
from stepfoley.engine.session import conditioning_mix
from stepfoley.lab.training.objectives import Batch
from stepfoley.lab.training.trainer import ResumableBatches


# The largest dataset list read: 1 GiB. A clip's line (a caption, a file path, a start) is a few
# hundred bytes, so this holds some three million clips, more than AudioSet's two million or so
# segments; a file past it is no list (a video or an archive given as --data), and was read whole
# into memory before its first line was refused.
MAX_LIST_BYTES = 2**30


def read_dataset_list(path: str | Path, check_starts: bool = False) -> list[dict]:
    """The clips of the JSON Lines list at `path`, their files made absolute; InvalidInputError
    for a list that cannot be read, a line that is not a clip, or a clip file that is not there
    (before any model loads or feature is made). With `check_starts`, also for a clip whose
    `start` is at or past the end of its file, as far as the file's header says (each file's
    header is read, about 3 ms: minutes for a list of 100,000s of clips, so `train controlnet`
    asks for it only when its features are to be made from the list)."""
    path = Path(path)
    try:
        # "-sig": a byte-order mark, which some Windows editors write, was line 1's JSON error
        text = _list_bytes(path).decode("utf-8-sig")
    except UnicodeDecodeError:
        raise InvalidInputError(f"The dataset list {path} is not UTF-8 text (JSON Lines, one clip a line).") from None
    entries = []
    lengths: dict[str, float | None] = {}  # clip file -> seconds: many clips may be cut from one file
    # Lines end at CR, LF or CRLF alone: str.splitlines() also cut at U+2028, U+2029 and U+0085,
    # which JSON keeps as they are inside a caption (the line ends cannot be in its strings).
    for n, line in enumerate(re.split(r"\r\n|\r|\n", text), 1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as e:
            raise InvalidInputError(f"{path}, line {n}: not valid JSON ({e.msg}).") from None
        except (ValueError, RecursionError):  # a number of thousands of digits; brackets thousands deep
            raise InvalidInputError(f"{path}, line {n}: not a clip (a number too long, or brackets nested too "
                                    "deep, to read).") from None
        if not isinstance(entry, dict) or not isinstance(entry.get("caption"), str) \
                or not (entry.get("audio") or entry.get("video")):
            raise InvalidInputError(f"{path}, line {n}: each clip needs a caption and an audio or video file.")
        start = entry.get("start", 0.0)
        if isinstance(start, bool) or not isinstance(start, (int, float)) or not 0 <= _seconds(start) < float("inf"):
            raise InvalidInputError(f"{path}, line {n}: start must be the clip's first second, a number from 0 to "
                                    "the clip's length.")
        for key in ("video", "audio"):
            if entry.get(key):
                if not isinstance(entry[key], str):
                    raise InvalidInputError(f"{path}, line {n}: {key} must be a file name.")
                entry[key] = _clip_file(path, n, key, entry[key])
                if not (check_starts and start > 0):
                    continue
                if entry[key] not in lengths:
                    lengths[entry[key]] = clip_seconds(entry[key])
                lasts = lengths[entry[key]]
                if lasts is not None and start >= lasts:  # cut from past its end, the clip was silence
                    raise InvalidInputError(f"{path}, line {n}: start {_seconds(start):g} s is past the end of the "
                                            f"{key} file {entry[key]}, which lasts {lasts:.2f} s; give a start within "
                                            "the clip.")
        entries.append(entry)
    if not entries:
        raise InvalidInputError(f"The dataset list {path} holds no clips.")
    return entries


def _seconds(start: int | float) -> float:
    """A start as seconds: an integer of hundreds of digits is past any clip (float() raised)."""
    try:
        return float(start)
    except OverflowError:
        return float("inf")


def clip_seconds(path: str) -> float | None:
    """How long the clip file at `path` lasts, in seconds, from its header (soundfile for a WAV or
    FLAC, PyAV for a container), as read_clip_audio reads it; None where the header does not say,
    or neither reads the file (the extraction says why, as it did)."""
    import soundfile as sf

    try:
        info = sf.info(path)
        return info.frames / info.samplerate if info.samplerate > 0 else None
    except Exception:  # soundfile raises several types for files that are not its own
        pass
    try:
        import av

        with av.open(path) as container:
            if container.duration is not None:
                return container.duration / av.time_base
            lengths = [float(s.duration * s.time_base) for s in container.streams
                       if s.duration is not None and s.time_base is not None]
            return max(lengths) if lengths else None
    except Exception:  # PyAV raises several types for files that are not its own
        return None


def _list_bytes(path: Path) -> bytes:
    """The bytes of the dataset list at `path`, a regular file (through links) of at most
    MAX_LIST_BYTES; InvalidInputError otherwise. A pipe held the command for ever, waiting for a
    writer, and /dev/zero was read without end."""
    def refused(what: str) -> InvalidInputError:
        return InvalidInputError(f"The dataset list {path} {what}; give the JSON Lines file of the clips.")

    try:
        # O_NONBLOCK: a pipe opens at once (to be refused below) where open() waited for a writer
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except (OSError, ValueError) as e:  # a NUL in the name is a ValueError
        if isinstance(e, OSError) and os.path.isdir(path):  # Windows does not open a folder
            raise refused("is a folder") from None
        raise refused(f"cannot be read ({e.strerror or e})" if isinstance(e, OSError)
                      else "cannot be a file's name (it holds a NUL)") from None
    try:
        found = os.fstat(fd)  # of what was opened: no other file can have taken its place since
        if stat.S_ISDIR(found.st_mode):
            raise refused("is a folder")
        if not stat.S_ISREG(found.st_mode):
            raise refused("is not a regular file (a device or a pipe)")
        pieces, kept = [], 0
        # at most one byte past the bound, whatever the size said: a file may grow while it is read
        while found.st_size <= MAX_LIST_BYTES and kept <= MAX_LIST_BYTES:
            piece = os.read(fd, min(8 * 2**20, MAX_LIST_BYTES + 1 - kept))
            if not piece:
                break
            pieces.append(piece)
            kept += len(piece)
    except OSError as e:
        raise refused(f"cannot be read ({e.strerror or e})") from None
    finally:
        os.close(fd)
    if max(found.st_size, kept) > MAX_LIST_BYTES:
        raise InvalidInputError(f"The dataset list {path} is larger than a list of clips can be "
                                f"({max(found.st_size, kept) / 2**20:,.0f} MiB, at most {MAX_LIST_BYTES // 2**20:,} "
                                "MiB); give the JSON Lines file of the clips, not a video or an archive.")
    return b"".join(pieces)


def _clip_file(list_path: Path, n: int, key: str, name: str) -> str:
    """Line `n`'s `key` file `name`, made absolute from the list's folder; InvalidInputError
    unless it is a file (a name no file can have, a NUL or a lone surrogate, or one too long, was
    a traceback). Looked up with os.stat, not Path.is_file(): that says False for a folder this
    user may not enter from Python 3.14, and raised PermissionError before it."""
    try:
        found = (list_path.parent / name).resolve()
        mode = os.stat(found).st_mode
    except PermissionError:  # the file's name is fine: a folder on the way is closed
        from stepfoley.engine.checkpoints import closed_folder_words

        raise InvalidInputError(f"{list_path}, line {n}: the {key} file {found} cannot be read: "
                                f"{closed_folder_words(found) or 'permission denied.'}") from None
    except OSError as e:
        if e.errno not in (errno.ENOENT, errno.ENOTDIR, errno.ELOOP):
            raise InvalidInputError(f"{list_path}, line {n}: the {key} file {_shown(name)} cannot be a file's name "
                                    f"({e.strerror or e}).") from None
        mode = None  # as Path.is_file() took these: not there
    except ValueError:  # UnicodeEncodeError is a ValueError
        raise InvalidInputError(f"{list_path}, line {n}: the {key} file {_shown(name)} cannot be a file's name "
                                "(a character no file name can have).") from None
    if mode is None or not stat.S_ISREG(mode):
        what = ("is not there" if mode is None else "is a folder, not a file" if stat.S_ISDIR(mode)
                else "is not a regular file (a device or a pipe)")
        raise InvalidInputError(f"{list_path}, line {n}: the {key} file {found} {what}.")
    return str(found)


def _shown(name: str) -> str:
    """A file name from a list, quoted as Python writes it (a NUL or a surrogate shown as an
    escape), at most about 60 characters."""
    return repr(name if len(name) <= 60 else name[:60] + "...")


def read_clip_audio(path: str, sample_rate: int, start: float, duration: float) -> np.ndarray:
    """Mono float32 (S,) at sample_rate: from a WAV/FLAC with soundfile, or from the audio
    stream of a video container with PyAV."""
    import av
    import soundfile as sf

    try:
        data, sr = sf.read(path, dtype="float32", always_2d=True)
        mono = mixing.resample(mixing.match_channels(data.T, 1), sr, sample_rate)[0]
    except sf.LibsndfileError:
        with av.open(path) as container:
            if not container.streams.audio:
                raise InvalidInputError(f"{path} has no audio to learn from.") from None
            resampler = av.AudioResampler(format="fltp", layout="mono", rate=sample_rate)
            chunks = [f.to_ndarray()[0] for frame in container.decode(audio=0)
                      for f in resampler.resample(frame)]
            chunks += [f.to_ndarray()[0] for f in resampler.resample(None)]
            mono = np.concatenate(chunks).astype(np.float32)
    if start > 0 and start * sample_rate >= mono.shape[-1]:
        # a file changed since the list was checked, or one whose header did not say: silence was learned from
        raise InvalidInputError(f"{path}: the clip starts at {start:g} s, past the end of its sound "
                                f"({mono.shape[-1] / sample_rate:.2f} s); give a start within the clip.")
    a = int(round(start * sample_rate))
    return mixing.fit_length(mono[None, a:], int(round(duration * sample_rate)))[0]


def require_video_clips(entries: list[dict], list_path=None) -> None:
    """InvalidInputError for a list without a video clip, before anything is encoded: the video
    condition cannot be learned from audio-text clips alone (hours of them, for some lists)."""
    if not any(entry.get("video") for entry in entries):
        named = f" {list_path}" if list_path is not None else ""
        raise InvalidInputError(f"The dataset list{named} has no video clips; at least one is needed to learn the "
                                "video condition.")


def entries_digest(entries: list[dict]) -> str:
    """What a features file was made from: a hash of the dataset list's entries."""
    return hashlib.sha256(json.dumps(entries, sort_keys=True).encode("utf-8")).hexdigest()


# 2: both halves encoded apart, the target's too (1 cut the target from the whole clip's latent);
# 3: the condition encoded as x̃ (2 encoded it at the clip's own level)
FEATURES_VERSION = "3"


def features_metadata(path: Path) -> dict:
    """The header metadata of a features file (read alone: the file is hundreds of MB); {} for
    one missing or unreadable. `train controlnet`'s hold "features_version", `train
    embedded`'s (lab.training.miniworld_data) "data_version": both are WORK/features.safetensors."""
    try:
        with safe_open(str(path), "pt") as f:
            return f.metadata() or {}
    except Exception:
        return {}


def features_match(path: Path, entries: list[dict], model_id: str, posterior: bool = False) -> bool:
    """Whether the features file at `path` was made from these entries by this model and this
    version (with the posterior's std where the model's codec has one, `posterior`): otherwise it
    is made again."""
    try:
        with safe_open(str(path), "pt") as f:
            meta = f.metadata() or {}
            return (meta.get("entries_sha256") == entries_digest(entries) and meta.get("model") == model_id
                    and meta.get("features_version") == FEATURES_VERSION
                    and ("half_latent_std" in f.keys()) == posterior)
    except Exception:  # missing or unreadable
        return False


def _fit_frames(latent: torch.Tensor, frames: int) -> torch.Tensor:
    # latent: (N, C) -> (frames, C), the last frame repeated where it is short
    if latent.shape[0] >= frames:
        return latent[:frames]
    return torch.cat([latent, latent[-1:].expand(frames - latent.shape[0], -1)])


@torch.inference_mode()
def extract_features(model, entries: list[dict], out_path: str | Path, log=print) -> Path:
    """Encode every clip with `model` (a FoleyModel) and save one safetensors file. Each clip's
    two halves are encoded apart (`half_latent`), the ControlNet's target as well as its
    condition: MMAudio's VAE attends over the whole clip, so a half cut from the whole clip's
    latent carries the other half's sound (changing only the other half moved a random VAE's
    latent 3.7 s from the cut), and the ControlNet would learn to find its condition in its
    target (paper Sec. 4.2: two segments that do not overlap). The condition is each half as the
    engine hands the ControlNet its x̃ (`conditioning_mix`: -20 LUFS, true-peak limited), not at
    the clip's own level: trained on a quiet clip's -36 LUFS, a ControlNet heard the earlier
    layers 16 dB louder at generation than anything it had learned from."""
    require_video_clips(entries)
    duration, sr = model.max_duration, model.sample_rate
    posterior = getattr(model.codec, "encode_posterior", None)  # MMAudio's VAE; the mel codec has none
    stds, halves, conditions, clips, syncs, texts, has_video = [], [], [], [], [], [], []
    video_cache: dict[tuple, tuple] = {}
    text_cache: dict[str, torch.Tensor] = {}
    for i, e in enumerate(entries):
        start = float(e.get("start", 0.0))
        wave = read_clip_audio(e.get("audio") or e["video"], sr, start, duration)
        cut = len(wave) // 2
        means, spreads, heard = [], [], []
        for part in (wave[:cut], wave[cut:]):
            audio = torch.from_numpy(part)[None].to(model.device)
            if posterior is not None:
                mean, std = posterior(audio)
                spreads.append(std[0].cpu())
            else:
                mean = model.codec.encode(audio)
            means.append(mean[0].cpu())
            as_condition = torch.from_numpy(conditioning_mix([part], sr, len(part)))[None].to(model.device)
            heard.append(model.codec.encode(as_condition)[0].cpu())  # the posterior's mean, as at generation
        frames = means[0].shape[0]
        halves.append(torch.stack([_fit_frames(m, frames) for m in means]))
        conditions.append(torch.stack([_fit_frames(m, frames) for m in heard]))
        if spreads:
            stds.append(torch.stack([_fit_frames(s, frames) for s in spreads]))
        if e.get("video"):
            key = (e["video"], start)
            if key not in video_cache:
                video_cache[key] = tuple(f[0].cpu() for f in model.video_encoder.encode_region(
                    Path(e["video"]), start, start + duration))
            clip, sync = video_cache[key]
            has_video.append(True)
        else:
            clip = sync = None
            has_video.append(False)
        clips.append(clip)
        syncs.append(sync)
        if e["caption"] not in text_cache:
            text_cache[e["caption"]] = model.text_encoder.encode([e["caption"]])[0].cpu()
        texts.append(text_cache[e["caption"]])
        if (i + 1) % 100 == 0:
            log(f"features: {i + 1}/{len(entries)} clips")
    template = next((c, s) for c, s in zip(clips, syncs) if c is not None)
    clips = [c if c is not None else torch.zeros_like(template[0]) for c in clips]
    syncs = [s if s is not None else torch.zeros_like(template[1]) for s in syncs]
    tensors = {"half_latent": torch.stack(halves), "half_condition": torch.stack(conditions), "clip": torch.stack(clips),
               "sync": torch.stack(syncs), "text": torch.stack(texts), "has_video": torch.tensor(has_video)}
    if stds:
        tensors["half_latent_std"] = torch.stack(stds)
    out_path = Path(out_path)
    metadata = {"model": model.model_id, "clips": str(len(entries)), "features_version": FEATURES_VERSION,
                "captions": json.dumps([e["caption"] for e in entries]), "entries_sha256": entries_digest(entries)}
    return write_atomically(out_path, lambda temp: save_file({k: v.contiguous() for k, v in tensors.items()},
                                                             str(temp), metadata=metadata), replace=True)


@dataclass
class FeatureSet:
    half_latent: torch.Tensor  # (M, 2, n, C) unnormalized: each half of the clip encoded apart (its mean)
    half_condition: torch.Tensor  # (M, 2, n, C) the same, each half first made x̃ (conditioning_mix)
    clip: torch.Tensor  # (M, Lc, Dc) over the whole clip
    sync: torch.Tensor  # (M, Ls, Ds) over the whole clip
    text: torch.Tensor  # (M, 77, Dt)
    has_video: torch.Tensor  # (M,) bool
    half_latent_std: torch.Tensor | None = None  # (M, 2, n, C): the VAE posterior's std (MMAudio); None for the mel codec

    @classmethod
    def load(cls, path: str | Path) -> "FeatureSet":
        t = load_file(str(path))
        return cls(t["half_latent"], t["half_condition"], t["clip"], t["sync"], t["text"], t["has_video"].bool(),
                   t.get("half_latent_std"))

    def __len__(self) -> int:
        return self.half_latent.shape[0]


def controlnet_batches(data: FeatureSet, normalize, batch_size: int, seed: int, rank: int = 0,
                       world: int = 1) -> Iterator[Batch]:
    """Pairs of non-overlapping halves of the same clip (paper Sec. 4.2), each encoded apart: the
    target half with its video (drawn from the VAE posterior where the features hold its std, as
    MMAudio's training draws its targets), and the other half, made x̃ as at generation (its
    mean), as the audio condition."""
    own = torch.arange(rank, len(data), world)
    lc, ls = data.clip.shape[1] // 2, (data.sync.shape[1] // 16) * 8

    def batch(g: torch.Generator) -> Batch:
        idx = own[torch.randint(len(own), (batch_size,), generator=g)]
        first = torch.rand(batch_size, generator=g) < 0.5  # which half is the target
        mean = data.half_latent[idx]                                    # (B, 2, n, C)
        drawn = mean
        if data.half_latent_std is not None:  # MMAudio's training targets: a draw from the VAE posterior
            drawn = mean + data.half_latent_std[idx] * torch.randn(mean.shape, generator=g)
        halves = lambda x, h: (x[:, :h], x[:, h:2 * h])  # noqa: E731
        (c0, c1), (s0, s1) = halves(data.clip[idx], lc), halves(data.sync[idx], ls)
        pick = lambda a, b: torch.where(first.view(-1, 1, 1), a, b)  # noqa: E731
        drawn, heard = (normalize(x.flatten(0, 1)).view(x.shape) for x in (drawn, data.half_condition[idx]))
        return Batch(latent=pick(drawn[:, 0], drawn[:, 1]), clip=pick(c0, c1), sync=pick(s0, s1), text=data.text[idx],
                     has_video=data.has_video[idx], cond_latent=pick(heard[:, 1], heard[:, 0]))

    return ResumableBatches(batch, torch.Generator().manual_seed(seed * 7919 + 17 + rank))
