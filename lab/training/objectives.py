"""Flow-matching objectives for the base network and the NAG ControlNet.

With x_t = t x1 + (1 - t) x0 and x0 ~ N(0, I), the network regresses the velocity x1 - x0
(paper Sec. 3.1; min_sigma = 0 as in MMAudio). Conditions are dropped to the learned empty
features with a small probability so that classifier-free guidance has an unconditional
model to subtract.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F


@dataclass
class Batch:
    """Precomputed features of B training examples.

    latent (B, N, C) normalized target; clip (B, Lc, Dc); sync (B, Ls, Ds); text (B, 77, Dt);
    has_video (B,) bool: False for audio-text pairs, whose video is the empty condition;
    cond_latent (B, N, C) normalized audio condition (ControlNet phase only);
    loudness (B, N) the target's loudness per latent frame (the loudness ControlNet's condition).
    """

    latent: torch.Tensor
    clip: torch.Tensor
    sync: torch.Tensor
    text: torch.Tensor
    has_video: torch.Tensor
    cond_latent: torch.Tensor | None = None
    loudness: torch.Tensor | None = None

    def to(self, device) -> "Batch":
        moved = {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v)
                 for k, v in self.__dict__.items()}
        return Batch(**moved)


def interpolate(x0: torch.Tensor, x1: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    # x0, x1: (B, N, C); t: (B,)
    t = t.view(-1, 1, 1)
    return t * x1 + (1 - t) * x0


def _drop(features: torch.Tensor, empty: torch.Tensor, keep: torch.Tensor) -> torch.Tensor:
    # features: (B, L, D); empty: (1 or L, D) broadcast over L; keep: (B,) bool
    empty = empty.to(features.dtype).expand(features.shape[1], -1)
    return torch.where(keep.view(-1, 1, 1), features, empty.unsqueeze(0))


def null_conditions(net, batch: Batch, drop_prob: float, generator: torch.Generator | None,
                    drop_text_always: bool = False):
    """Replace video (missing or dropped) and text (dropped) by the network's empty features."""
    b = batch.latent.shape[0]
    rand = lambda: torch.rand(b, generator=generator).to(batch.latent.device)  # noqa: E731
    keep_video = batch.has_video & (rand() >= drop_prob)
    keep_text = torch.zeros(b, dtype=torch.bool, device=batch.latent.device) if drop_text_always \
        else rand() >= drop_prob
    clip = _drop(batch.clip, net.empty_clip_feat, keep_video)
    sync = _drop(batch.sync, net.empty_sync_feat, keep_video)
    text = _drop(batch.text, net.empty_string_feat, keep_text)
    return clip, sync, text


def logit_normal_times(b: int, generator: torch.Generator | None) -> torch.Tensor:
    """t = sigmoid(n), n ~ N(0, 1): MMAudio's training times, denser in the middle of the path
    where the velocity is hardest to predict than at its ends."""
    return torch.sigmoid(torch.randn(b, generator=generator))


def _noisy_pair(x1: torch.Tensor, generator: torch.Generator | None):
    b = x1.shape[0]
    x0 = torch.randn(x1.shape, generator=generator).to(x1.device, x1.dtype)
    t = logit_normal_times(b, generator).to(x1.device)
    return x0, t, interpolate(x0, x1, t)


def base_flow_loss(net, batch: Batch, drop_prob: float = 0.1, generator: torch.Generator | None = None):
    """MMAudio's objective: video + text -> the clip's full audio."""
    clip, sync, text = null_conditions(net, batch, drop_prob, generator)
    conditions = net.preprocess_conditions(clip, sync, text, latent_seq_len=batch.latent.shape[1])
    x0, t, xt = _noisy_pair(batch.latent, generator)
    v = net.predict_flow(xt, t, conditions)
    return F.mse_loss(v.float(), (batch.latent - x0).float())


def controlnet_flow_loss(net, controlnet, batch: Batch, drop_prob: float = 0.1,
                         generator: torch.Generator | None = None):
    """The NAG estimator u_psi(x_t, t, V, ∅, x_cond) (paper Sec. 4.2): the target and the audio
    condition are non-overlapping segments of the same clip; the text is always empty.
    `controlnet` None measures the base alone, u(V, ∅), on the same batch (a held-out baseline)."""
    clip, sync, text = null_conditions(net, batch, drop_prob, generator, drop_text_always=True)
    conditions = net.preprocess_conditions(clip, sync, text, latent_seq_len=batch.latent.shape[1])
    x0, t, xt = _noisy_pair(batch.latent, generator)
    embedded = net.embed_latent(xt)  # the frozen base's projection, shared with the ControlNet
    control = None if controlnet is None else controlnet(xt, t, conditions, batch.cond_latent, base=net,
                                                         latent_embedding=embedded)
    v = net.predict_flow(xt, t, conditions, control=control, latent_embedding=embedded)
    return F.mse_loss(v.float(), (batch.latent - x0).float())


def loudness_flow_loss(net, loudness_control, batch: Batch, drop_prob: float = 0.1,
                       generator: torch.Generator | None = None):
    """The base's objective with its conditional branch steered by the loudness ControlNet,
    which reads the target's own loudness per latent frame (Draw an Audio's time-loudness
    condition): it learns to put the sound's energy where the curve asks for it. The base is
    frozen. `loudness_control` None measures the base alone on the same batch."""
    clip, sync, text = null_conditions(net, batch, drop_prob, generator)
    conditions = net.preprocess_conditions(clip, sync, text, latent_seq_len=batch.latent.shape[1])
    x0, t, xt = _noisy_pair(batch.latent, generator)
    embedded = net.embed_latent(xt)
    control = None if loudness_control is None else loudness_control(
        xt, t, conditions, batch.loudness.unsqueeze(-1), base=net, latent_embedding=embedded)
    v = net.predict_flow(xt, t, conditions, control=control, latent_embedding=embedded)
    return F.mse_loss(v.float(), (batch.latent - x0).float())
