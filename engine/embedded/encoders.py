"""Cheap, training-free video features for the embedded model, computed on a CPU from decoded
frames (the mini-world's arrays or a real file read by engine.video), shaped like MMAudio's:

* appearance ("clip") at 8 fps, (B, int(8 * d), 96): per frame, a 4x4 grid of mean colours
  (48), a 4x4 grid of luminance contrast (16), and soft colour/luminance histograms (32);
* motion ("sync") on MMAudio's Synchformer grid, (B, 8 * segments, 64) with
  segments = (frames_25fps - 16) // 8 + 1 (192 steps for 8 s): per 25 fps frame, a 4x4 grid of
  mean absolute and mean signed frame differences (32), a 4x4 grid of change-of-difference
  magnitudes (16, catches impacts and reversals), a 2x2 grid of per-colour absolute differences
  (12), and four global motion figures; then resampled onto the evenly spaced steps.

Every group is squashed with fixed constants to roughly unit scale; nothing is learned, so the
same frames always give the same features.
"""

from typing import Callable

import torch
import torch.nn.functional as F

from ..errors import InvalidInputError

# MMAudio's frame grid (engine.video's CLIP_FPS, SYNC_FPS, SYNC_SEGMENT_FRAMES, SYNC_SEGMENT_STEP
# and mmaudio.config's SYNC_FRAMES_PER_SEGMENT), written here so that importing the embedded
# model does not import PyAV; tests/test_embedded_encoders.py holds the two to the same values
CLIP_FPS = 8
SYNC_FPS = 25
FRAME_SIZE = 64
SEGMENT_FRAMES, SEGMENT_STRIDE, TOKENS_PER_SEGMENT = 16, 8, 8
CLIP_DIM = 96
SYNC_DIM = 64
HISTOGRAM_BINS = 8


def clip_length(duration_s: float) -> int:
    """MMAudio's CLIP sequence length: int(8 * d)."""
    return int(round(duration_s, 6) * CLIP_FPS)


def sync_length(n_frames_25fps: int) -> int:
    """MMAudio's Synchformer sequence length: 8 tokens per 16-frame window at stride 8."""
    return ((n_frames_25fps - SEGMENT_FRAMES) // SEGMENT_STRIDE + 1) * TOKENS_PER_SEGMENT


def _as_float_frames(frames: torch.Tensor) -> torch.Tensor:
    # frames: (B, T, 3, H, W) uint8 -> (B, T, 3, 64, 64) float in [0, 1]
    batch, n, channels, height, width = frames.shape
    x = frames.float().div(255.0)
    if (height, width) != (FRAME_SIZE, FRAME_SIZE):
        x = F.interpolate(x.reshape(batch * n, channels, height, width), size=(FRAME_SIZE, FRAME_SIZE),
                          mode="area").reshape(batch, n, channels, FRAME_SIZE, FRAME_SIZE)
    return x


def _luminance(rgb: torch.Tensor) -> torch.Tensor:
    # rgb: (..., 3, H, W) -> (..., H, W)
    weights = torch.tensor([0.299, 0.587, 0.114], dtype=rgb.dtype, device=rgb.device)
    return torch.einsum("...chw,c->...hw", rgb, weights)


def _grid_mean(x: torch.Tensor, cells: int) -> torch.Tensor:
    # x: (..., H, W) -> (..., cells * cells)
    lead = x.shape[:-2]
    pooled = F.adaptive_avg_pool2d(x.reshape(-1, 1, *x.shape[-2:]), cells)
    return pooled.reshape(*lead, cells * cells)


def _soft_histogram(values: torch.Tensor, bins: int) -> torch.Tensor:
    # values: (..., P) in [0, 1] -> (..., bins) fractions; linear vote between neighbouring bin
    # centres, so a small brightness change moves the histogram a little, not a whole bin.
    centres = (torch.arange(bins, dtype=values.dtype, device=values.device) + 0.5) / bins
    votes = torch.clamp(1 - (values[..., None] - centres).abs() * bins, min=0)   # (..., P, bins)
    votes = votes / votes.sum(-1, keepdim=True).clamp(min=1e-9)
    return votes.mean(-2)


def _squash(x: torch.Tensor, gain: float) -> torch.Tensor:
    # Motion figures span orders of magnitude (a blink vs. drizzle); asinh is linear near zero
    # and logarithmic beyond, and keeps the sign of signed differences.
    return torch.asinh(gain * x) / 2.0


def appearance_features(frames: torch.Tensor) -> torch.Tensor:
    # frames: (B, T, 3, 64, 64) float in [0, 1] -> (B, T, CLIP_DIM)
    lum = _luminance(frames)                                             # (B, T, H, W)
    colour_means = _grid_mean(frames, 4)                                 # (B, T, 3, 16)
    contrast = (_grid_mean(lum ** 2, 4) - _grid_mean(lum, 4) ** 2).clamp(min=0).sqrt()   # (B, T, 16)
    channels = torch.cat([frames, lum[:, :, None]], dim=2).flatten(-2)   # (B, T, 4, H*W)
    histograms = _soft_histogram(channels, HISTOGRAM_BINS)               # (B, T, 4, bins)
    return torch.cat([
        (colour_means.flatten(-2) - 0.25) / 0.2,
        contrast / 0.1,
        (histograms.flatten(-2).sqrt() - 0.25) / 0.3,        # Hellinger: tames the background bin
    ], dim=-1)


def motion_features(frames: torch.Tensor) -> torch.Tensor:
    # frames: (B, T, 3, 64, 64) float in [0, 1] -> (B, T, SYNC_DIM); row t describes t-1 -> t
    colour_diff = torch.diff(frames, dim=1, prepend=frames[:, :1])      # (B, T, 3, H, W)
    lum_diff = _luminance(colour_diff)                                   # (B, T, H, W)
    change_of_diff = torch.diff(lum_diff, dim=1, prepend=lum_diff[:, :1])
    moving = (lum_diff.abs() > 0.05).float().mean((-2, -1))              # (B, T)
    return torch.cat([
        _squash(_grid_mean(lum_diff.abs(), 4), 150.0),
        _squash(_grid_mean(lum_diff, 4), 400.0),
        _squash(_grid_mean(change_of_diff.abs(), 4), 100.0),
        _squash(_grid_mean(colour_diff.abs(), 2).flatten(-2), 150.0),
        _squash(torch.stack([lum_diff.abs().mean((-2, -1)), lum_diff.mean((-2, -1)),
                             change_of_diff.abs().mean((-2, -1)), moving], dim=-1), 150.0),
    ], dim=-1)


def resample_to_sync_grid(per_frame: torch.Tensor, n_steps: int) -> torch.Tensor:
    # per_frame: (B, T, D) at 25 fps -> (B, n_steps, D): linear interpolation at the centres of
    # n_steps equal slices of all the frames. The network spreads the steps over the whole
    # audio, so they must span the whole picture: MMAudio's Synchformer windows cover only
    # (segments - 1) * 8 + 16 frames, up to 7 fewer than a region that is not 0.64 + 0.32 k s
    # long, and sampling only those put picture time t at audio time t * frames / covered (a
    # 4.76 s region's lamp blinked up to 0.26 s late by its end). An 8 s window, all the model
    # was trained on, is covered whole: the same steps either way.
    n_frames = per_frame.shape[1]
    position = ((torch.arange(n_steps, dtype=torch.float64) + 0.5) * n_frames / n_steps - 0.5).clamp(0, n_frames - 1)
    left = position.floor().long()
    right = (left + 1).clamp(max=n_frames - 1)
    frac = (position - left).to(per_frame.dtype).to(per_frame.device)[None, :, None]
    return per_frame[:, left] * (1 - frac) + per_frame[:, right] * frac


def clip_frame_indices(n_clip: int) -> torch.Tensor:
    """25 fps frame on screen at each 8 fps instant i/8."""
    return torch.floor(torch.arange(n_clip, dtype=torch.float64) * SYNC_FPS / CLIP_FPS + 1e-6).long()


class EmbeddedVideoEncoder:
    """Frames at 25 fps -> (clip_f (B, Tc, 96), sync_f (B, Ts, 64)); satisfies
    engine.pipeline.VideoEncoder through `encode_region`."""

    clip_dim = CLIP_DIM
    sync_dim = SYNC_DIM
    encoder_id = f"embedded-video-v2|clip{CLIP_DIM}@{CLIP_FPS}|sync{SYNC_DIM}@{SYNC_FPS}|{FRAME_SIZE}px"

    def encode_frames(self, frames: torch.Tensor, duration_s: float | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        # frames: (T, 3, H, W) or (B, T, 3, H, W) uint8 at 25 fps (engine.video.read_region's layout)
        if frames.ndim == 4:
            frames = frames[None]
        if frames.ndim != 5 or frames.shape[2] != 3:
            raise InvalidInputError(
                f"Video frames must be shaped (batch, time, 3, height, width); got {tuple(frames.shape)}.")
        n_frames = frames.shape[1]
        if n_frames < SEGMENT_FRAMES:
            raise InvalidInputError(
                f"The region is too short for the video features: {n_frames} frames at 25 fps, they need "
                f"at least {SEGMENT_FRAMES} ({SEGMENT_FRAMES / SYNC_FPS:.2f} s). Select a longer region.")
        duration_s = n_frames / SYNC_FPS if duration_s is None else duration_s
        n_clip = max(1, clip_length(duration_s))
        x = _as_float_frames(frames)
        picks = clip_frame_indices(n_clip).clamp(max=n_frames - 1)
        clip_f = appearance_features(x[:, picks])
        sync_f = resample_to_sync_grid(motion_features(x), sync_length(n_frames))
        return clip_f.float(), sync_f.float()

    def conditioned_duration(self, duration_s: float) -> float:
        return duration_s  # the motion features span every frame of the region (resample_to_sync_grid)

    def progress_units(self, duration_s: float) -> int:
        return 1  # one read and one cheap forward: nothing worth counting inside

    # A picture focus crops the frames to it (engine.video.focus_frame) before these features:
    # the single-source clips the model learned from draw their source large (44-64 of 64
    # pixels), so a source's box scaled up to the frame is the picture it knows best. Blacking
    # out the rest instead (same geometry) let more of the other sources through on 6 scenes.
    @torch.no_grad()
    def encode_region(self, video, start: float, end: float,
                      on_progress: Callable[[int], None] | None = None,
                      focus=None) -> tuple[torch.Tensor, torch.Tensor]:
        from ..video import read_region      # PyAV only when a file is actually read
        frames = read_region(video, start, end, SYNC_FPS, FRAME_SIZE, focus=focus)
        features = self.encode_frames(frames, duration_s=end - start)
        if on_progress is not None:
            on_progress(1)
        return features
