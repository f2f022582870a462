"""MMAudioCodec: waveform <-> MMAudio latent, the codec of the real MMAudio stack.

encode: wave (B, S) -> log-mel -> VAE posterior mean -> (B, N, C) channels-last
decode: latent (B, N, C) -> VAE decoder -> log-mel -> BigVGAN -> wave (B, S)

Latents are *unnormalized* (the flow network's `normalize` maps them to the sampler's
space). `encode` gives the posterior's mean: deterministic for the same stem, which is what a
NAG audio condition should be. MMAudio's training draws its flow targets from the posterior
(mean + std·ε); `encode_posterior` gives both for that.
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
import torch.nn as nn

from stepfoley.engine.codec import bigvgan_v2
from stepfoley.engine.codec.bigvgan import BigVGAN, BigVGANConfig, load_generator
from stepfoley.engine.codec.mel import MelConfig, MelConverter
from stepfoley.engine.codec.vae import VAE, VAEConfig, load_vae
from stepfoley.engine.errors import CheckpointError, InvalidInputError

MODES = ("16k", "44k")


class MMAudioCodec(nn.Module):
    def __init__(self, mode: str, vae: VAE, vocoder: BigVGAN):
        super().__init__()
        if mode not in MODES:
            raise InvalidInputError(f"Unknown codec mode {mode!r}: use '16k' or '44k'.")
        self.mode = mode
        self.mel = MelConverter(MelConfig.preset(mode))
        if vae.config.data_dim != self.mel.config.num_mels or vocoder.config.num_mels != self.mel.config.num_mels:
            raise CheckpointError(
                f"The {mode} codec needs a {self.mel.config.num_mels}-mel VAE and vocoder; got a "
                f"{vae.config.data_dim}-mel VAE and a {vocoder.config.num_mels}-mel vocoder."
            )
        if vocoder.config.hop_size != self.mel.config.hop_size:
            raise CheckpointError(
                f"The vocoder makes {vocoder.config.hop_size} samples per mel frame, the {mode} mel uses "
                f"{self.mel.config.hop_size}: wrong vocoder for this mode."
            )
        self.vae = vae
        self.vocoder = vocoder

    # -- the codec contract (engine.pipeline.AudioCodec) --------------------------------

    @property
    def sample_rate(self) -> int:
        return self.mel.config.sample_rate

    @property
    def latent_dim(self) -> int:
        return self.vae.config.embed_dim

    @property
    def samples_per_latent(self) -> int:
        # One latent per two mel frames (the VAE halves the frame rate once).
        return 2 * self.mel.config.hop_size

    def latent_length(self, duration_s: float) -> int:
        """Latents for a clip: 250 for 8 s at 16 kHz, 345 for 8 s at 44.1 kHz (MMAudio's
        sequence lengths, rounded up like the reference). Rounded to a millionth of a sample
        first, so a duration off by a float's last bit (16.03 - 8.03 = 8.000000000000002) does
        not round up to a 251st latent the network was not trained with, and a part of a sample
        still counts as the reference counts it (1.161 s at 44.1 kHz, 51,200.1 samples: 51)."""
        return int(math.ceil(round(duration_s * self.sample_rate, 6) / self.samples_per_latent))

    @torch.no_grad()
    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        # wave: (B, S) -> latent (B, N, C), N = S // samples_per_latent: the posterior's mean
        return self.encode_posterior(wave)[0]

    @torch.no_grad()
    def encode_posterior(self, wave: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # wave: (B, S) -> the VAE posterior's mean and std, (B, N, C) each
        if not hasattr(self.vae, "encoder"):
            raise InvalidInputError("This codec was loaded for decoding only (need_encoder=False); it cannot encode audio.")
        if wave.ndim != 2:
            raise InvalidInputError(f"Audio to encode must be (batch, samples) mono; got shape {tuple(wave.shape)}.")
        usable = wave.shape[-1] // self.samples_per_latent * self.samples_per_latent
        if usable == 0:
            raise InvalidInputError(
                f"Audio to encode is {wave.shape[-1]} samples long; at least {self.samples_per_latent} are needed."
            )
        # Whole latents only: a trailing half mel-pair would give the VAE an odd frame count.
        mel = self.mel(wave[..., :usable].float())
        posterior = self.vae.encode(mel.to(self._dtype()))
        return posterior.mean.transpose(1, 2).float(), posterior.std.transpose(1, 2).float()

    @torch.no_grad()
    def decode(self, latent: torch.Tensor) -> torch.Tensor:
        # latent: (B, N, C) -> wave (B, N * samples_per_latent)
        if latent.ndim != 3 or latent.shape[-1] != self.latent_dim:
            raise InvalidInputError(
                f"Latents to decode must be (batch, length, {self.latent_dim}); got {tuple(latent.shape)}."
            )
        mel = self.vae.decode(latent.transpose(1, 2).to(self._dtype()))
        return self.vocoder(mel).squeeze(1).float()

    def _dtype(self) -> torch.dtype:
        return self.vae.data_mean.dtype

    # -- loading -------------------------------------------------------------------------

    @staticmethod
    def from_directory(
        weights_dir: Path,
        mode: str = "16k",
        need_encoder: bool = True,
        vae_config: VAEConfig | None = None,
        vocoder_config: BigVGANConfig | None = None,
    ) -> "MMAudioCodec":
        """Load the official files of a weights folder (docs/weights.md):
        16k: ext_weights/v1-16.pth + ext_weights/best_netG.pt;
        44k: ext_weights/v1-44.pth + the ext_weights/bigvgan_v2_44khz_128band_512x/ folder.
        A .safetensors copy beside a file is read instead of it. `need_encoder=False`
        frees the VAE encoder (decode-only use). `vae_config` / `vocoder_config` replace
        the official sizes (tests with small checkpoints); the BigVGAN-v2 folder always
        brings its own config.json."""
        from stepfoley.engine.weights import CODEC_FILES, FILES, file_to_read, read_weights

        if mode not in MODES:
            raise InvalidInputError(f"Unknown codec mode {mode!r}: use '16k' or '44k'.")
        root = Path(weights_dir).expanduser()
        vae_spec, vocoder_spec = (FILES[n] for n in CODEC_FILES[mode])
        for spec in (vae_spec, vocoder_spec):
            if file_to_read(root / spec.checkpoint_relpath()) is None:
                raise CheckpointError(
                    f"Missing {root / spec.checkpoint_relpath()}: the {spec.what}. Put the official file there "
                    "(docs/weights.md lists every file), or run `stepfoley weights check` on the folder."
                )
        state, source = read_weights(root / vae_spec.relpath)
        vae = load_vae(state, vae_config or VAEConfig.preset(mode), source=source)
        if not need_encoder:
            del vae.encoder
        if mode == "16k":
            state, source = read_weights(root / vocoder_spec.relpath, vocoder_spec.entry)
            vocoder = load_generator(state, vocoder_config or BigVGANConfig.preset("mmaudio_16k"), source=source)
        else:
            vocoder = bigvgan_v2.load_bigvgan_v2(root / vocoder_spec.relpath, read_weights)
        return MMAudioCodec(mode, vae, vocoder).eval()
