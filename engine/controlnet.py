"""The NAG ControlNet: the audio-conditioned flow estimator u_psi(x_t, t, V, ∅, x̃) of Eq. 9;
and, built the same way, the embedded model's loudness ControlNet, which reads a loudness curve.

Paper Sec. 4.2 / Fig. 3, in the style of the Stable Diffusion 3.5 ControlNet: the audio
condition x̃ (the normalized latent of the tracks made so far) gets its own input projection,
which is added to the frozen base's projection of x_t; `depth` single-stream transformer blocks,
conditioned per token exactly like the base's audio stream (timestep + pooled CLIP/text vector +
sync features), turn it into one residual per block. Residual i, through a zero-initialized
Linear(H, H), is added to the base's audio hidden state after base block i.

Both the condition projection and the residual projections start at zero, so an untrained
ControlNet changes nothing: u_psi(V, ∅, x̃) = u_theta(V, ∅) exactly. The base network is passed
in at every call and is not a submodule: it is never saved with, or trained by, the ControlNet.

The condition is x̃'s latent (condition_dim = the latent's channels) for NAG, or one value per
latent frame (condition_dim 1: engine.loudness_curve.loudness_condition) for the loudness
ControlNet, Draw an Audio's time-loudness condition for a network trained without one.
"""
from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path

import torch
import torch.nn as nn
from torch import Tensor

from stepfoley.engine.checkpoints import load_strict, save_safetensors_atomic
from stepfoley.engine.errors import CheckpointError, InvalidInputError
from stepfoley.engine.mmaudio import ChannelLastConv1d, MMAudio, MMAudioConfig, SingleStreamBlock

FORMAT = "stepfoley.nag_controlnet"
FORMAT_VERSION = "1"


def base_config_id(config: MMAudioConfig) -> str:
    """The identifier of a base network's architecture (its name is ignored: same sizes, same
    network). A ControlNet stores it and only runs on a base with the same identifier."""
    sizes = ",".join(
        f"{f.name}={getattr(config, f.name)}" for f in fields(config) if f.compare
    )
    return f"mmaudio({sizes})"


@dataclass(frozen=True)
class ControlNetConfig:
    depth: int
    hidden_dim: int
    num_heads: int
    mlp_ratio: float
    latent_dim: int
    base_config: str  # base_config_id() of the base network it was made for
    # channels of the condition per latent frame; None: the latent's (x̃, the NAG ControlNet).
    # Configs stored before this field existed are NAG ControlNets.
    condition_dim: int | None = None

    def __post_init__(self):
        for name in ("depth", "hidden_dim", "num_heads", "latent_dim", "condition_dim"):
            value = getattr(self, name)
            if name == "condition_dim" and value is None:
                continue
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise InvalidInputError(f"ControlNet {name} must be a whole number of at least 1, got {value!r}.")
        if isinstance(self.mlp_ratio, bool) or not isinstance(self.mlp_ratio, (int, float)) or not self.mlp_ratio > 0:
            raise InvalidInputError(f"ControlNet mlp_ratio must be a number above 0, got {self.mlp_ratio!r}.")
        if self.hidden_dim % self.num_heads:
            raise InvalidInputError(
                f"ControlNet hidden_dim {self.hidden_dim} is not divisible by num_heads {self.num_heads}."
            )

    @property
    def condition_channels(self) -> int:
        return self.condition_dim or self.latent_dim

    @classmethod
    def for_base(cls, base: MMAudioConfig, depth: int = 4, condition_dim: int | None = None) -> "ControlNetConfig":
        """A ControlNet shaped like `base` (same width, heads, MLP ratio and latent channels),
        reading a condition of `condition_dim` channels per frame (None: an audio latent)."""
        if depth > base.depth:
            raise InvalidInputError(
                f"A ControlNet of depth {depth} has more blocks than the base {base.describe()}."
            )
        return cls(
            depth=depth,
            hidden_dim=base.hidden_dim,
            num_heads=base.num_heads,
            mlp_ratio=base.mlp_ratio,
            latent_dim=base.latent_dim,
            base_config=base_config_id(base),
            condition_dim=condition_dim,
        )


class AudioControlNet(nn.Module):
    def __init__(self, config: ControlNetConfig):
        super().__init__()
        self.config = config
        H = config.hidden_dim
        # condition -> (B, N, H); a k=7 conv sees as much context as the base's own latent projection.
        self.audio_cond_proj = nn.Sequential(
            ChannelLastConv1d(config.condition_channels, H, kernel_size=7, padding=3),
            nn.SiLU(),
            nn.Linear(H, H),
        )
        self.blocks = nn.ModuleList(
            SingleStreamBlock(H, config.num_heads, config.mlp_ratio, kernel_size=3)
            for _ in range(config.depth)
        )
        self.residual_projs = nn.ModuleList(nn.Linear(H, H) for _ in range(config.depth))
        self.initialize_weights()

    def initialize_weights(self) -> None:
        """Xavier Linears and zero adaLN (as MMAudio's own init), then zero the two projections
        that connect the ControlNet to the base, so it starts as an exact no-op."""
        for module in self.modules():
            if isinstance(module, nn.Linear):
                nn.init.xavier_uniform_(module.weight)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
        for block in self.blocks:
            nn.init.zeros_(block.adaLN_modulation[-1].weight)
            nn.init.zeros_(block.adaLN_modulation[-1].bias)
        for zero_linear in (self.audio_cond_proj[-1], *self.residual_projs):
            nn.init.zeros_(zero_linear.weight)
            nn.init.zeros_(zero_linear.bias)

    @classmethod
    def from_base(cls, base: MMAudio, depth: int = 4, condition_dim: int | None = None) -> "AudioControlNet":
        """A fresh ControlNet whose block i starts as a copy of the base's audio-stream block i,
        the one its residual i feeds (ControlNet's "trainable copy": the audio stream of a joint
        block, then the fused blocks); the zero projections still make it a no-op."""
        controlnet = cls(ControlNetConfig.for_base(base.config, depth, condition_dim))
        for block, source in zip(controlnet.blocks, base_audio_blocks(base)):
            block.load_state_dict(source.state_dict())
        return controlnet.to(base.device)

    def check_base(self, base: MMAudio) -> None:
        if base_config_id(base.config) != self.config.base_config:
            raise CheckpointError(
                f"This NAG ControlNet was made for another base model ({self.config.base_config}) "
                f"and cannot steer {base.config.describe()}. Use the ControlNet that belongs to "
                "this model."
            )

    def embed_condition(self, condition: Tensor) -> Tensor:
        """The condition's projection (B, N, H); step-invariant, so samplers compute it once."""
        # condition: (B, N, condition_channels): x̃'s normalized latent, or a loudness curve
        channels = self.config.condition_channels
        if condition.ndim != 3 or condition.shape[-1] != channels:
            what = ("audio condition latent", "Was it encoded by this model's codec?") \
                if self.config.condition_dim is None else ("loudness condition", "")
            raise InvalidInputError(
                f"The {what[0]} has shape {list(condition.shape)}, but this ControlNet expects "
                f"(batch, frames, {channels}). {what[1]}".rstrip()
            )
        return self.audio_cond_proj(condition)

    def forward(
        self,
        latent: Tensor,
        t: Tensor,
        conditions,
        audio_latent: Tensor,
        base: MMAudio,
        audio_features: Tensor | None = None,
        latent_embedding: Tensor | None = None,
    ) -> list[Tensor]:
        """Residuals for the base's first `depth` blocks, each (B, N, H).

        `conditions` are the base's preprocessed conditions of the branch it steers (NAG: video,
        empty caption). `audio_latent` is the condition (x̃, or the loudness curve);
        `audio_features` may carry a precomputed `embed_condition(audio_latent)`,
        `latent_embedding` the base's `embed_latent(latent)` (the sampler shares it with the
        base's own rows).
        """
        # latent: (B, N, C); t: (B,) or 0-dim; audio_latent: (B or 1, N, C)
        B, N, _ = latent.shape
        self.check_base(base)
        _keep_frozen(base)
        if audio_features is None:
            audio_features = self.embed_condition(audio_latent)
        if audio_features.shape[1] != N:
            raise InvalidInputError(
                f"The audio condition covers {audio_features.shape[1]} latent frames but the "
                f"sound being made has {N}; the earlier tracks' mix must span the same region."
            )
        conditions = conditions.expand(B)
        t = t.reshape(-1).expand(B) if t.numel() == 1 else t

        if latent_embedding is None:
            latent_embedding = base.embed_latent(latent)
        h = latent_embedding + audio_features  # (B, N, H)
        global_c = base.global_conditioning(t, conditions)  # (B, 1, H)
        token_c = base.token_conditioning(global_c, conditions)  # (B, N, H)
        rope = base.latent_rope(N, latent.device)

        residuals = []
        for block, residual_proj in zip(self.blocks, self.residual_projs):
            h = block(h, token_c, rope)
            residuals.append(residual_proj(h))
        return residuals


def base_audio_blocks(base: MMAudio) -> list[SingleStreamBlock]:
    """The base's audio-stream blocks in order: residual i of a ControlNet is added after block i."""
    return [joint.latent_block for joint in base.joint_blocks] + list(base.fused_blocks)


def _keep_frozen(base: MMAudio) -> None:
    # The ControlNet is trained with the base fixed (paper Sec. 4.2): never let gradients reach it.
    if torch.is_grad_enabled() and any(p.requires_grad for p in base.parameters()):
        base.requires_grad_(False)


# ---------------------------------------------------------------------------------------------
# Files


def save_controlnet(path: str | os.PathLike, controlnet: AudioControlNet, overwrite: bool = False) -> Path:
    """Write the ControlNet as safetensors, its config as JSON in the metadata, atomically
    (checkpoints.save_safetensors_atomic). An existing file is kept unless `overwrite` is set."""
    path = Path(path)
    if path.exists() and not overwrite:
        raise InvalidInputError(
            f"{path} already exists; choose another name for the ControlNet (nothing was written)."
        )
    metadata = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "config": json.dumps(asdict(controlnet.config), sort_keys=True),
    }
    return save_safetensors_atomic(controlnet.state_dict(), path, metadata, overwrite=overwrite)


def read_controlnet_config(path: str | os.PathLike, base_config: MMAudioConfig) -> ControlNetConfig:
    """The configuration a ControlNet file stores, from its header alone (no tensor is read), so
    a file made for another base is refused before anything large loads."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"The NAG ControlNet file {path} does not exist.")
    try:
        with safe_open(str(path), "pt") as f:
            metadata = f.metadata() or {}
    except (SafetensorError, OSError, ValueError) as error:
        raise _unreadable(path, error) from None
    if metadata.get("format") != FORMAT:
        raise CheckpointError(
            f"{path} is not a StepFoley NAG ControlNet (its metadata has no "
            f"'format: {FORMAT}'). Export it with engine.controlnet.save_controlnet."
        )
    try:  # InvalidInputError is a ValueError: a stored size out of range
        config = ControlNetConfig(**json.loads(metadata["config"]))
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"The configuration stored in {path} is unreadable ({error}).") from None
    wanted = base_config_id(base_config)
    if config.base_config != wanted:
        raise CheckpointError(
            f"The NAG ControlNet {path.name} was made for another base model "
            f"({config.base_config}), not for {base_config.describe()}. Load the ControlNet "
            "that belongs to this model."
        )
    # the base's identifier alone says nothing of the ControlNet's own sizes: one that does not
    # fit the base failed every job (or was built, a billion parameters, before being refused)
    shaped = ControlNetConfig.for_base(base_config, min(config.depth, base_config.depth), config.condition_dim)
    if config.depth > base_config.depth or config != shaped:
        differ = [f"{name} {getattr(config, name)!r} (the base's {getattr(shaped, name)!r})"
                  for name in ("hidden_dim", "num_heads", "mlp_ratio", "latent_dim")
                  if getattr(config, name) != getattr(shaped, name)]
        if config.depth > base_config.depth:
            differ.append(f"depth {config.depth} (the base has {base_config.depth} blocks)")
        raise CheckpointError(f"The ControlNet {path.name} does not fit its base model: {', '.join(differ)}. The file "
                              "is damaged or was edited; export or download it again.")
    return config


def _unreadable(path: Path, error: BaseException) -> CheckpointError:
    from stepfoley.engine.checkpoints import reading_error

    return reading_error(path) or CheckpointError(
        f"{path} is not a readable safetensors file ({error}); it may be truncated or not a "
        "ControlNet. Download or export it again.")


def load_controlnet(path: str | os.PathLike, base_config: MMAudioConfig) -> AudioControlNet:
    """Read a ControlNet saved by `save_controlnet`, on the CPU in eval mode, refusing one made
    for another base."""
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    config = read_controlnet_config(path, base_config)
    try:
        with safe_open(str(path), "pt") as f:
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as error:
        raise _unreadable(path, error) from None
    controlnet = AudioControlNet(config)
    load_strict(controlnet, tensors, f"{path} does not match its own configuration",
                "The file is damaged; export or download it again.", limit=4, source=str(path))
    return controlnet.eval()
