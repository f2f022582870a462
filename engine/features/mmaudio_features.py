"""MMAudio's conditioning encoders over the real weights:

    video = MMAudioVideoEncoder.from_weights_dir(weights_dir)
    clip_f, sync_f = video.encode_region("picture.mp4", 12.0, 20.0)   # (1, 64, 1024), (1, 192, 768)
    text = MMAudioTextEncoder.from_weights_dir(weights_dir, clip=video.clip)
    text_f = text.encode(["footsteps on gravel"])                       # (1, 77, 1024)

weights_dir follows MMAudio's layout: ext_weights/synchformer_state_dict.pth and the CLIP
directory DFN5B-CLIP-ViT-H-14-384/ (open_clip_pytorch_model.bin, open_clip_config.json; the
tokenizer vocabulary ships with StepFoley). The region is decoded once; all CLIP frames go
through one batched forward, all Synchformer windows through another. Nothing is cached
here: the session keeps each region's features in engine.features.cache.FeatureCache under
the encoder's `encoder_id`.
"""

from __future__ import annotations

import hashlib
import time
from pathlib import Path
from typing import Callable, Sequence

import torch

from stepfoley.engine.errors import CheckpointError, InvalidInputError
from stepfoley.engine.features.cache import file_identity
from stepfoley.engine.features.clip import (ClipConfig, ClipModel, ClipTokenizer, encode_clip_frames, find_bpe_vocab,
                                  find_weight_file, load_clip)
from stepfoley.engine.features.synchformer import (SynchformerConfig, SynchformerVisual, encode_sync_frames,
                                         load_synchformer)
from stepfoley.engine.video import (CLIP_FPS, CLIP_SIZE, SYNC_FPS, SYNC_SEGMENT_FRAMES, SYNC_SEGMENT_STEP, FrameRequest,
                                   read_regions, region_frame_count)
from stepfoley.engine.weights import CLIP_NAME, clip_folder, file_to_read

CPU_CLIP_BATCH = 8  # frames
CPU_SYNC_BATCH = 4  # segments
SYNCHFORMER_FILE = Path("ext_weights") / "synchformer_state_dict.pth"
# In the encoder id: features of a region off the segment grid cover the grid's span (the
# region's last frame held), not the reference's shorter one.
GEOMETRY = "sync-grid-held"


# Less of a region than this past its last whole frame at 25 fps does not take another frame:
# a DAW's selection of 8 s and a sample (8.00002 s) stays on the 8 s the network knows.
PAST_LAST_FRAME_S = 1e-3


def sync_grid_duration(duration_s: float) -> float:
    """The shortest span that Synchformer's segments (16 frames at 25 fps, one every 8) cover
    exactly, 0.64 + 0.32 k s, and that holds a region of `duration_s` (up to PAST_LAST_FRAME_S
    less). MMAudio's network spreads the motion features over the whole audio it makes, so
    audio this long keeps picture time t at audio time t; over the region's own length,
    segments cover up to 0.28 s less and the end lags."""
    frames = region_frame_count(0.0, duration_s, SYNC_FPS)
    if duration_s - frames / SYNC_FPS >= PAST_LAST_FRAME_S:
        frames += 1
    steps = -(-(max(frames, SYNC_SEGMENT_FRAMES) - SYNC_SEGMENT_FRAMES) // SYNC_SEGMENT_STEP)
    return (SYNC_SEGMENT_FRAMES + steps * SYNC_SEGMENT_STEP) / SYNC_FPS


def grid_frame_counts(span_s: float) -> tuple[int, int]:
    """(CLIP frames at 8 fps, Synchformer frames at 25 fps) over a span on the grid. CLIP's are
    rounded, not cut: the network spreads them over the span too, and 17 frames over 2.24 s put
    the last 0.1 s late (MMAudio's int() is exact at 8 s, where the two agree)."""
    return round(span_s * CLIP_FPS), region_frame_count(0.0, span_s, SYNC_FPS)


def hold_last_frame(frames: torch.Tensor, count: int) -> torch.Tensor:
    """frames (T, 3, H, W) -> (count, 3, H, W): the last frame repeated after the region's own."""
    if frames.shape[0] >= count or frames.shape[0] == 0:
        return frames[:count]
    return torch.cat([frames, frames[-1:].expand(count - frames.shape[0], *frames.shape[1:])])


def model_fingerprint(*models: torch.nn.Module) -> str:
    """Identifies weights without a file (tests, benchmarks): config plus parameter sums."""
    digest = hashlib.sha256()
    for model in models:
        digest.update(repr(getattr(model, "cfg", type(model).__name__)).encode())
        for name, p in model.state_dict().items():
            digest.update(f"{name}:{float(p.double().sum()):.10e}".encode())
    return digest.hexdigest()[:16]


def _find_clip_dir(weights_dir: Path) -> Path:
    folder = clip_folder(weights_dir)
    if folder is not None:
        return folder
    raise CheckpointError(
        f"No CLIP directory {CLIP_NAME}/ in {weights_dir}. Download apple/DFN5B-CLIP-ViT-H-14-384 "
        "(open_clip_pytorch_model.bin, open_clip_config.json) into it.")


_loaded_clips: dict[tuple, ClipModel] = {}


def shared_clip(clip_dir: Path, cfg: ClipConfig | None = None) -> ClipModel:
    """One CLIP (~4 GB in float32) for the image and the text encoder of the same directory.
    `cfg` replaces the folder's open_clip_config.json (reduced test models)."""
    key = (file_identity(find_weight_file(clip_dir)), cfg)
    if key not in _loaded_clips:
        _loaded_clips.clear()  # keep at most one resident
        _loaded_clips[key] = load_clip(clip_dir, cfg)
    return _loaded_clips[key]


class MMAudioVideoEncoder:
    """A region of a video file -> (clip_f (1, Tc, Dc), sync_f (1, Ts, Ds))."""

    def __init__(self, clip: ClipModel, synchformer: SynchformerVisual, extractor_id: str | None = None,
                 clip_size: int = CLIP_SIZE, clip_batch: int | None = None,
                 sync_batch: int | None = None):
        self.clip = clip.eval()
        self.synchformer = synchformer.eval()
        self.requests = (FrameRequest(CLIP_FPS, clip_size, "stretch"),
                         FrameRequest(SYNC_FPS, synchformer.cfg.image_size, "crop"))
        self.extractor_id = extractor_id or model_fingerprint(clip.visual, synchformer)
        self.extractor_id += f"|clip{clip_size}|{GEOMETRY}"
        self.clip_batch, self.sync_batch = clip_batch, sync_batch
        self.last_timings: dict[str, float] = {}

    @classmethod
    def from_weights_dir(cls, weights_dir: str | Path, clip: ClipModel | None = None,
                         device: str | torch.device = "cpu",
                         synchformer_config: SynchformerConfig | None = None,
                         clip_config: ClipConfig | None = None) -> "MMAudioVideoEncoder":
        """`synchformer_config` / `clip_config` replace the official sizes (tests with small
        checkpoints). A .safetensors copy beside the Synchformer .pth is read instead of it."""
        weights_dir = Path(weights_dir)
        clip_dir = _find_clip_dir(weights_dir)
        sync_path = file_to_read(weights_dir / SYNCHFORMER_FILE) or weights_dir / SYNCHFORMER_FILE
        clip = clip if clip is not None else shared_clip(clip_dir, clip_config)
        synchformer = load_synchformer(sync_path, synchformer_config or SynchformerConfig())
        clip_file = find_weight_file(clip_dir)
        extractor_id = f"{file_identity(clip_file)}|{file_identity(sync_path)}"
        return cls(clip.to(device), synchformer.to(device), extractor_id=extractor_id)

    from_directory = from_weights_dir  # the name engine.loading uses

    @property
    def encoder_id(self) -> str:
        """What engine.pipeline.VideoEncoder promises: identifies weights and frame geometry."""
        return self.extractor_id

    def conditioned_duration(self, duration_s: float) -> float:
        """How long the audio these features condition is, for a region this long (see
        sync_grid_duration): the session makes that much and keeps the region's part."""
        return sync_grid_duration(duration_s)

    def progress_units(self, duration_s: float) -> int:
        """CLIP frames plus Synchformer segments of a region this long."""
        clip, sync = grid_frame_counts(self.conditioned_duration(duration_s))
        return clip + (sync - SYNC_SEGMENT_FRAMES) // SYNC_SEGMENT_STEP + 1

    def _batches(self) -> tuple[int | None, int | None]:
        # On a CPU one region costs minutes (full-size CLIP about 6 s a frame): small batches let
        # the engine report progress as it goes, at no cost in speed there.
        if self.clip_batch or self.sync_batch or next(self.clip.parameters()).device.type != "cpu":
            return self.clip_batch, self.sync_batch
        return CPU_CLIP_BATCH, CPU_SYNC_BATCH

    def encode_region(self, video_path: str | Path, start_s: float, end_s: float,
                      on_progress: Callable[[int], None] | None = None,
                      focus=None) -> tuple[torch.Tensor, torch.Tensor]:
        """`on_progress(units_done)` after each batch of CLIP frames and Synchformer segments;
        `focus` (engine.pipeline.PictureFocus): both see only that part of the picture. The
        features cover conditioned_duration(end_s - start_s) from start_s, the region's last
        frame held past its end: only the selected picture conditions the audio."""
        report = on_progress or (lambda done: None)
        clip_batch, sync_batch = self._batches()
        t0 = time.perf_counter()
        # a focus crops the frames before both fits: CLIP and Synchformer were trained on every
        # framing footage has, so the region scaled up to their input is a picture they know
        clip_frames, sync_frames = read_regions(Path(video_path), start_s, end_s, self.requests, focus)
        clip_count, sync_count = grid_frame_counts(self.conditioned_duration(end_s - start_s))
        clip_frames, sync_frames = hold_last_frame(clip_frames, clip_count), hold_last_frame(sync_frames, sync_count)
        t1 = time.perf_counter()
        clip_f = encode_clip_frames(self.clip, clip_frames, clip_batch, on_progress=report)
        t2 = time.perf_counter()
        sync_f = encode_sync_frames(self.synchformer, sync_frames, sync_batch,
                                    on_progress=lambda done: report(clip_f.shape[1] + done))
        t3 = time.perf_counter()
        self.last_timings = {"decode_s": t1 - t0, "clip_s": t2 - t1, "sync_s": t3 - t2}
        return clip_f, sync_f


class MMAudioTextEncoder:
    """Captions -> per-token CLIP text features (B, 77, 1024), normalized as MMAudio does."""

    def __init__(self, clip: ClipModel, tokenizer: ClipTokenizer):
        self.clip = clip.eval()
        self.tokenizer = tokenizer
        self.max_caption_tokens = tokenizer.context_length - 2  # <start_of_text> and <end_of_text>

    def token_count(self, caption: str) -> int:
        return len(self.tokenizer.encode(caption))

    @classmethod
    def from_weights_dir(cls, weights_dir: str | Path, clip: ClipModel | None = None,
                         device: str | torch.device = "cpu",
                         clip_config: ClipConfig | None = None) -> "MMAudioTextEncoder":
        clip_dir = _find_clip_dir(Path(weights_dir))
        clip = clip if clip is not None else shared_clip(clip_dir, clip_config).to(device)
        return cls(clip, ClipTokenizer(find_bpe_vocab(clip_dir), clip.cfg.context_length))

    from_directory = from_weights_dir

    @torch.inference_mode()
    def encode(self, captions: Sequence[str]) -> torch.Tensor:
        if isinstance(captions, str) or not captions:
            raise InvalidInputError("Give the text encoder a list of captions (one per track).")
        tokens = self.tokenizer(list(captions)).to(next(self.clip.parameters()).device)
        return self.clip.encode_text_tokens(tokens)
