"""MMAudio's flow-prediction network (an MM-DiT): the features are projected once per generation
(preprocess_conditions), then each sampling step runs predict_flow on the latent."""

from __future__ import annotations

from typing import Callable, Mapping, Optional, Sequence, Union

import torch
import torch.nn as nn

from stepfoley.engine.checkpoints import load_strict
from stepfoley.engine.errors import InvalidInputError
from stepfoley.engine.mmaudio.conditions import PreprocessedConditions
from stepfoley.engine.mmaudio.config import SYNC_FRAMES_PER_SEGMENT, MMAudioConfig, SequenceLengths
from stepfoley.engine.mmaudio.layers import (ChannelLastConv1d, FinalLayer, JointBlock, SingleStreamBlock, SwiGLU,
                                             TimestepEmbedder, rope_rotations, sync_upsample_index)

KEYS_RECOMPUTED_ON_LOAD = ("t_embed.freqs", "latent_rot", "clip_rot")
Advice = Union[str, Callable[[], str]]  # a callable is called only when the weights do not fit


class MMAudio(nn.Module):
    def __init__(self, config: MMAudioConfig):
        super().__init__()
        self.config = cfg = config
        H = cfg.hidden_dim
        act = nn.SiLU if cfg.v2 else nn.SELU

        # Parameters owned by this module come first in state_dict(); keep the reference order.
        self.sync_pos_emb = nn.Parameter(torch.zeros(1, 1, SYNC_FRAMES_PER_SEGMENT, cfg.sync_dim))
        # NaN until a checkpoint (or a trainer) provides the statistics, so forgetting them shows.
        self.latent_mean = nn.Parameter(torch.full((1, 1, cfg.latent_dim), float("nan")), requires_grad=False)
        self.latent_std = nn.Parameter(torch.full((1, 1, cfg.latent_dim), float("nan")), requires_grad=False)
        self.empty_string_feat = nn.Parameter(torch.zeros(cfg.text_seq_len, cfg.text_dim), requires_grad=False)
        self.empty_clip_feat = nn.Parameter(torch.zeros(1, cfg.clip_dim))
        self.empty_sync_feat = nn.Parameter(torch.zeros(1, cfg.sync_dim))

        self.audio_input_proj = nn.Sequential(
            ChannelLastConv1d(cfg.latent_dim, H, kernel_size=7, padding=3), act(), SwiGLU(H, 4 * H, kernel_size=7))
        extra_act = [nn.SiLU()] if cfg.v2 else []  # v2 adds an activation after the Linear
        self.clip_input_proj = nn.Sequential(
            nn.Linear(cfg.clip_dim, H), *extra_act, SwiGLU(H, 4 * H, kernel_size=3))
        self.sync_input_proj = nn.Sequential(
            ChannelLastConv1d(cfg.sync_dim, H, kernel_size=7, padding=3), act(), SwiGLU(H, 4 * H, kernel_size=3))
        self.text_input_proj = nn.Sequential(nn.Linear(cfg.text_dim, H), *extra_act, SwiGLU(H, 4 * H))

        self.clip_cond_proj = nn.Linear(H, H)
        self.text_cond_proj = nn.Linear(H, H)
        self.global_cond_mlp = SwiGLU(H, 4 * H)
        self.final_layer = FinalLayer(H, cfg.latent_dim)
        if cfg.v2:
            self.t_embed = TimestepEmbedder(H, num_channels=H, max_period=1)
        else:
            self.t_embed = TimestepEmbedder(H, num_channels=256, max_period=10000)
        self.joint_blocks = nn.ModuleList([
            JointBlock(H, cfg.num_heads, cfg.mlp_ratio, pre_only=(i == cfg.num_joint_blocks - 1))
            for i in range(cfg.num_joint_blocks)])
        self.fused_blocks = nn.ModuleList([
            SingleStreamBlock(H, cfg.num_heads, cfg.mlp_ratio, kernel_size=3) for _ in range(cfg.fused_depth)])

        self._tables: dict[tuple, torch.Tensor] = {}
        self.initialize_weights()

    # -- training-time initialization (checkpoints overwrite all of it) --

    def initialize_weights(self) -> None:
        """DiT-style: Xavier Linears, zero biases, N(0, 0.02) timestep MLP, zero adaLN and output."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        nn.init.normal_(self.t_embed.mlp[0].weight, std=0.02)
        nn.init.normal_(self.t_embed.mlp[2].weight, std=0.02)
        blocks = [b for jb in self.joint_blocks for b in (jb.latent_block, jb.clip_block, jb.text_block)]
        for block in [*blocks, *self.fused_blocks, self.final_layer]:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        nn.init.zeros_(self.final_layer.conv.weight)
        nn.init.zeros_(self.final_layer.conv.bias)

    # -- properties --

    @property
    def num_blocks(self) -> int:
        return self.config.depth

    @property
    def hidden_dim(self) -> int:
        return self.config.hidden_dim

    @property
    def latent_dim(self) -> int:
        return self.config.latent_dim

    @property
    def device(self) -> torch.device:
        return self.latent_mean.device

    # -- checkpoints --

    def load_weights(self, state_dict: Mapping[str, torch.Tensor], advice: Advice = "", assign: bool = False,
                     source: str = "(in memory)", values_checked: bool = False) -> None:
        """Strict load of an official-layout state dict (the caller's dict is not modified).
        Weights that do not fit raise CheckpointError naming this network and the keys, then
        `advice`: what to do, which only the loader of the file knows (engine/loading.py).
        `assign`: the network (built on the meta device) takes the file's tensors as they are.
        `source`: the file, as a refusal of NaN or infinite weights names it; `values_checked`:
        the caller refused those already (load_strict)."""
        weights = {k: v for k, v in state_dict.items() if k not in KEYS_RECOMPUTED_ON_LOAD}
        load_strict(self, weights, f"These weights do not fit the MMAudio network {self.config.describe()}",
                    advice, labels=("missing key(s)", "unexpected key(s)", "shape mismatch(es)"), assign=assign,
                    source=source, values_checked=values_checked)

    # -- latent statistics --

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """Codec latent -> the sampler's space. Pure (the reference works in place)."""
        return (x - self.latent_mean) / self.latent_std

    def unnormalize(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.latent_std + self.latent_mean

    # -- cached position tables --

    def _cached(self, key: tuple, device: torch.device, make) -> torch.Tensor:
        key = (*key, torch.device(device))
        if key not in self._tables:
            # Plain tensors even when first asked for under inference_mode, so that the same
            # network can later be trained (inference tensors cannot be saved for backward).
            with torch.inference_mode(False):
                self._tables[key] = make().to(device)
        return self._tables[key]

    def latent_rope(self, length: int, device=None) -> torch.Tensor:
        """(1, length, head_dim/2, 2, 2) float32 rotary table of the audio stream."""
        return self._cached(("latent_rope", length), device or self.device,
                            lambda: rope_rotations(length, self.config.head_dim))

    def clip_rope(self, clip_len: int, latent_len: int, device=None) -> torch.Tensor:
        """CLIP frames' rotary table, positions stretched onto the latent time axis."""
        return self._cached(("clip_rope", clip_len, latent_len), device or self.device,
                            lambda: rope_rotations(clip_len, self.config.head_dim, latent_len / clip_len))

    def sync_upsample_index(self, sync_len: int, latent_len: int, device=None) -> torch.Tensor:
        return self._cached(("sync_index", sync_len, latent_len), device or self.device,
                            lambda: sync_upsample_index(sync_len, latent_len))

    # -- conditions --

    def preprocess_conditions(self, clip_f: torch.Tensor, sync_f: torch.Tensor, text_f: torch.Tensor,
                              *, latent_seq_len: Optional[int] = None) -> PreprocessedConditions:
        """Everything that does not depend on the latent or t.

        clip_f (B, Lc, clip_dim), sync_f (B, Ls, sync_dim), text_f (B, Lt, text_dim); the batches may
        differ only by being 1. `latent_seq_len` is needed when Lc/Ls are not the config's 8 s lengths.
        """
        # clip_f: (B, Lc, clip_dim); sync_f: (B, Ls, sync_dim); text_f: (B, Lt, text_dim)
        cfg = self.config
        self._check_features(clip_f, cfg.clip_dim, "CLIP (video) features", "clip_dim")
        self._check_features(sync_f, cfg.sync_dim, "Synchformer (sync) features", "sync_dim")
        self._check_features(text_f, cfg.text_dim, "text features", "text_dim")
        if sync_f.shape[1] % SYNC_FRAMES_PER_SEGMENT:
            raise InvalidInputError(
                f"Synchformer features have {sync_f.shape[1]} frames, not a multiple of "
                f"{SYNC_FRAMES_PER_SEGMENT} (one Synchformer segment gives {SYNC_FRAMES_PER_SEGMENT}).")
        latent_len = latent_seq_len or self._default_latent_len(clip_f.shape[1], sync_f.shape[1])

        # sync_f: (B, Ls, Ds) -> (B, segments, 8, Ds): each frame gets its in-segment position
        bs_sync = sync_f.shape[0]
        sync_f = sync_f.view(bs_sync, -1, SYNC_FRAMES_PER_SEGMENT, sync_f.shape[-1]) + self.sync_pos_emb
        sync_f = sync_f.flatten(1, 2)

        clip_f = self.clip_input_proj(clip_f)  # (B, Lc, H)
        sync_f = self.sync_input_proj(sync_f)  # (B, Ls, H)
        text_f = self.text_input_proj(text_f)  # (B, Lt, H)
        index = self.sync_upsample_index(sync_f.shape[1], latent_len, sync_f.device)
        sync_f = sync_f.index_select(1, index)  # (B, N, H)

        clip_f_c = self.clip_cond_proj(clip_f.mean(dim=1))  # (B, H)
        text_f_c = self.text_cond_proj(text_f.mean(dim=1))  # (B, H)
        return PreprocessedConditions(clip_f=clip_f, sync_f=sync_f, text_f=text_f,
                                      clip_f_c=clip_f_c, text_f_c=text_f_c)

    def _check_features(self, x: torch.Tensor, dim: int, what: str, field_name: str) -> None:
        if x.ndim != 3 or x.shape[-1] != dim:
            raise InvalidInputError(
                f"The {what} have shape {list(x.shape)}, but the model {self.config.describe()} expects "
                f"(batch, frames, {dim}) ({field_name}). Were they made by the encoder of another model?")

    def _default_latent_len(self, clip_len: int, sync_len: int) -> int:
        cfg = self.config
        if (clip_len, sync_len) == (cfg.clip_seq_len, cfg.sync_seq_len):
            return cfg.latent_seq_len
        raise InvalidInputError(
            f"The video features cover {clip_len} CLIP and {sync_len} sync frames, not the model's "
            f"{cfg.clip_seq_len} and {cfg.sync_seq_len} (8 s); pass latent_seq_len for this region "
            f"(SequenceLengths.for_duration computes it).")

    def get_empty_conditions(self, bs: int, negative_text_features: Optional[torch.Tensor] = None, *,
                             seq_lengths: Optional[SequenceLengths] = None) -> PreprocessedConditions:
        """The unconditional branch: learned empty video features and the empty caption (or a
        negative prompt). Empty video is computed at batch 1 and broadcast; negative text keeps its
        own batch, as in the reference."""
        lengths = seq_lengths or self.config.seq_lengths
        if negative_text_features is not None:
            text = negative_text_features
        else:
            text = self.empty_string_feat.unsqueeze(0)
        clip = self.empty_clip_feat.unsqueeze(0).expand(1, lengths.clip, -1)
        sync = self.empty_sync_feat.unsqueeze(0).expand(1, lengths.sync, -1)
        cond = self.preprocess_conditions(clip, sync, text, latent_seq_len=lengths.latent)
        return cond.expand(bs)

    def empty_conditions(self, bs: int, latent_len: int, clip_len: int, sync_len: int,
                         negative_text_features: Optional[torch.Tensor] = None) -> PreprocessedConditions:
        """`get_empty_conditions` for a region of any length: `latent_len` latents under `clip_len`
        CLIP and `sync_len` Synchformer frames."""
        return self.get_empty_conditions(bs, negative_text_features,
                                         seq_lengths=SequenceLengths(latent_len, clip_len, sync_len))

    def empty_text_features(self) -> torch.Tensor:
        """(1, Lt, Dt): the text features of the empty caption (the "no text" condition)."""
        return self.empty_string_feat.unsqueeze(0)

    # -- per step --

    def timestep_embedding(self, t: torch.Tensor) -> torch.Tensor:
        # t: (B,) -> (B, 1, H)
        return self.t_embed(t).unsqueeze(1)

    def global_conditioning(self, t: torch.Tensor, conditions: PreprocessedConditions) -> torch.Tensor:
        """(B, 1, H): timestep embedding + MLP of the pooled CLIP and text projections."""
        global_c = self.global_cond_mlp(conditions.clip_f_c + conditions.text_f_c)  # (B, H)
        return self.timestep_embedding(t) + global_c.unsqueeze(1)

    def token_conditioning(self, global_c: torch.Tensor, conditions: PreprocessedConditions) -> torch.Tensor:
        """(B, N, H) per-token conditioning of the audio stream ("extended_c")."""
        return global_c + conditions.sync_f

    def embed_latent(self, latent: torch.Tensor) -> torch.Tensor:
        """The audio stream's input projection, (B, N, C) -> (B, N, H). It depends on the latent
        alone, so the guidance branches of one step, which all start from the same x, share it."""
        return self.audio_input_proj(latent)

    def predict_flow(self, latent: torch.Tensor, t: torch.Tensor, conditions: PreprocessedConditions,
                     control: Optional[Sequence[torch.Tensor]] = None, *,
                     latent_embedding: Optional[torch.Tensor] = None) -> torch.Tensor:
        """Velocity for normalized latents. latent (B, N, C); t (B,) or 0-dim; conditions of batch B
        or 1; control[i] (B, N, H) is added to the audio stream after block i. `latent_embedding`
        (B, N, H) is `embed_latent(latent)` when the caller already has it."""
        # latent: (B, N, C)
        B, N, _ = latent.shape
        conditions = conditions.expand(B)
        self._check_step_inputs(latent, conditions, control)
        if latent_embedding is not None and tuple(latent_embedding.shape) != (B, N, self.hidden_dim):
            raise InvalidInputError(
                f"The latent embedding has shape {list(latent_embedding.shape)}; expected "
                f"{[B, N, self.hidden_dim]} for a latent of shape {list(latent.shape)}.")
        t = t.reshape(-1).expand(B) if t.numel() == 1 else t
        clip_f, text_f = conditions.clip_f, conditions.text_f
        latent_rope = self.latent_rope(N, latent.device)
        clip_rope = self.clip_rope(clip_f.shape[1], N, latent.device)

        x = self.embed_latent(latent) if latent_embedding is None else latent_embedding  # (B, N, H)
        global_c = self.global_conditioning(t, conditions)  # (B, 1, H)
        extended_c = self.token_conditioning(global_c, conditions)  # (B, N, H)
        control = list(control or [])

        for i, block in enumerate(self.joint_blocks):
            x, clip_f, text_f = block(x, clip_f, text_f, global_c, extended_c, latent_rope, clip_rope)
            if i < len(control):
                x = x + control[i]
        for j, block in enumerate(self.fused_blocks):
            x = block(x, extended_c, latent_rope)
            if len(self.joint_blocks) + j < len(control):
                x = x + control[len(self.joint_blocks) + j]

        # Conditioned on global_c, not extended_c: an upstream slip (MMAudio #55) the weights learned.
        flow = self.final_layer(x, global_c)  # (B, N, C)
        return flow.to(latent.dtype)

    def _check_step_inputs(self, latent, conditions, control) -> None:
        B, N, C = latent.shape
        if C != self.config.latent_dim:
            raise InvalidInputError(
                f"The latent has {C} channels but the model {self.config.describe()} works on "
                f"{self.config.latent_dim}; the codec does not belong to this model.")
        if conditions.latent_seq_len != N:
            raise InvalidInputError(
                f"The latent has {N} frames but the conditions were prepared for "
                f"{conditions.latent_seq_len}; prepare them with latent_seq_len={N}.")
        if control is not None:
            if len(control) > self.num_blocks:
                raise InvalidInputError(
                    f"{len(control)} control residuals given, but the network has only {self.num_blocks} blocks.")
            for i, residual in enumerate(control):
                if tuple(residual.shape) != (B, N, self.hidden_dim):
                    raise InvalidInputError(
                        f"Control residual {i} has shape {list(residual.shape)}; expected {[B, N, self.hidden_dim]}.")

    def forward(self, latent: torch.Tensor, clip_f: torch.Tensor, sync_f: torch.Tensor, text_f: torch.Tensor,
                t: torch.Tensor) -> torch.Tensor:
        # latent: (B, N, C); clip_f: (B, Lc, Dc); sync_f: (B, Ls, Ds); text_f: (B, Lt, Dt); t: (B,)
        conditions = self.preprocess_conditions(clip_f, sync_f, text_f, latent_seq_len=latent.shape[1])
        return self.predict_flow(latent, t, conditions)


def infer_preset(state_dict: Mapping[str, torch.Tensor]) -> Optional[str]:
    """The official model whose layout these weights have (by key set and shapes), or None."""
    weights = {k: tuple(v.shape) for k, v in state_dict.items() if k not in KEYS_RECOMPUTED_ON_LOAD}
    for name in MMAudioConfig.preset_names():
        cfg = MMAudioConfig.preset(name)
        # Cheap screen before building the candidate (on the meta device: no memory).
        if weights.get("audio_input_proj.0.weight") != (cfg.hidden_dim, cfg.latent_dim, 7):
            continue
        with torch.device("meta"):
            net = MMAudio(cfg)
        if {k: tuple(v.shape) for k, v in net.state_dict().items()} == weights:
            return name
    return None
