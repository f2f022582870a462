"""The embedded model's audio codec: a log-mel latent, ln(mel + offset), decoded by mel-filterbank
inversion and Griffin-Lim phase reconstruction on a grid four times finer than the latent's.
Runs on a CPU in a fraction of a second per 8 s clip.

Why this and not a learned VAE + vocoder: it needs no training and no weights, it is exact about
timing (one latent frame per 512 samples, so 250 frames for 8 s at 16 kHz, like MMAudio's 16k
layout), and its latent is interpretable (band energies), which makes the mini-world's stems
easy to check. The price is phasey, slightly smeared transients on decode; a small vocoder can
replace `decode` later without changing the latent.

Contract (docs/architecture.md): `sample_rate`, `latent_dim`, `encode(wave (B, S)) -> (B, N, C)`
channels-last, `decode(latent (B, N, C)) -> (B, S)` with S = N * hop; optionally
`match_level(latent, reference, strength)`, which lets the sampler keep guidance from raising
the level (engine.sampler, `level_anchor`).

`decode` does not clamp: a latent louder than full scale decodes to samples beyond ±1, so the
engine can measure the overload (engine.mixing.finish_stem) before it brings the track to stem
loudness. Each row decodes the same whatever the batch it is in (the initial phase is drawn once
and shared by every row).
"""

import math
from dataclasses import dataclass

import torch

from ..codec.mel import slaney_mel_filterbank
from ..errors import InvalidInputError


MAX_LATENT = 20.0  # e^20: squared and summed over an 8 s latent, still far inside float32
MIN_MAGNITUDE = 1e-10
DECODER_FIELDS = ("nnls_iterations", "griffin_lim_iterations", "momentum", "synthesis_hop")


@dataclass(frozen=True)
class MelCodecConfig:
    sample_rate: int = 16000
    n_fft: int = 1024
    hop: int = 512
    n_mels: int = 40
    f_min: float = 0.0
    f_max: float = 8000.0
    # latent = ln(mel magnitude + log_offset). Below the offset (63-73 dB under a full-scale
    # tone in its band) the latent turns linear, so silence is one value, ln(log_offset), close
    # to the sounds instead of a distant spike the flow must jump to, and it decodes to silence.
    # log_offset 0 is the first models' latent, ln(max(mel, log_floor)), for weights trained so.
    log_offset: float = 1e-3
    log_floor: float = 1e-5
    # The decoder's settings (DECODER_FIELDS) shape only how a latent is heard, never the latent
    # itself: a weights file records them, but every file decodes with this version's
    # (synthesis_hop_for fits the synthesis grid to the latent the file recorded).
    # Mel inversion: more multiplicative updates concentrate a band's energy where its
    # neighbours put it, instead of spreading it flat over the band (a tone stays a tone). On 24
    # development mini-world stems, 300 instead of 30 took the round trip's log-mel error from
    # 0.91 to 0.83 dB; on the finer synthesis grid 16 Griffin-Lim iterations did as well as 32
    # (both figures within 0.01) in half the time.
    nnls_iterations: int = 300
    griffin_lim_iterations: int = 16
    momentum: float = 0.99           # "fast Griffin-Lim": converges in far fewer iterations
    # Griffin-Lim's hop. At the latent's own hop (n_fft / 2) neighbouring frames share too little
    # to agree on a phase, which is heard as warbling and measured as frame-to-frame flux; the
    # magnitudes are interpolated (geometrically, between frame centres) onto this finer grid.
    synthesis_hop: int = 128

    def __post_init__(self):
        if not _grid_fits(self.hop, self.hop, self.n_fft):
            raise InvalidInputError(f"The codec's FFT size ({self.n_fft}) must be a whole number of hops "
                                    f"({self.hop}), with an even overlap.")
        if not _grid_fits(self.synthesis_hop, self.hop, self.n_fft):
            raise InvalidInputError(f"The codec's synthesis hop ({self.synthesis_hop}) must divide its hop "
                                    f"({self.hop}) and its FFT size ({self.n_fft}), with an even overlap.")
        if self.nnls_iterations < 0 or self.griffin_lim_iterations < 0:
            raise InvalidInputError("The codec's iteration counts must not be negative.")
        if not (math.isfinite(self.log_offset) and self.log_offset >= 0 and math.isfinite(self.log_floor)
                and self.log_floor > 0):
            raise InvalidInputError(f"The codec's log offset ({self.log_offset}) must be a finite number of at least "
                                    f"0 and its log floor ({self.log_floor}) a finite positive one.")


def _grid_fits(step: int, hop: int, n_fft: int) -> bool:
    # frames every `step` samples tile both grids: a whole number per hop and per FFT, centred alike
    return step > 0 and hop % step == 0 and n_fft % step == 0 and (n_fft - step) % 2 == 0


def synthesis_hop_for(hop: int, n_fft: int) -> int:
    """This version's synthesis hop for a latent on a grid of `hop` samples (weights record their
    latent, not the decoder): the default where it fits that grid, else a quarter of the hop, else
    the hop itself (the first decoder, Griffin-Lim on the latent's own grid)."""
    for step in (MelCodecConfig.synthesis_hop, hop // 4):
        if hop > 0 and _grid_fits(step, hop, n_fft):
            return step
    return hop


class MelCodec:
    """Log-mel latent codec. Stateless apart from its filterbank; safe to share."""

    def __init__(self, config: MelCodecConfig = MelCodecConfig()):
        self.config = config
        self.sample_rate = config.sample_rate
        self.latent_dim = config.n_mels
        self.hop = config.hop
        # The one Slaney filterbank (engine.codec.mel), rounded as the model was trained with it.
        self.filters = slaney_mel_filterbank(config.sample_rate, config.n_fft, config.n_mels,
                                             config.f_min, config.f_max, librosa_rounding=False)  # (M, F)
        self.filters_pinv = torch.linalg.pinv(self.filters)              # (F, M)
        self.window = torch.hann_window(config.n_fft, periodic=True)

    def latent_length(self, duration_s: float) -> int:
        """Latent frames for a clip of `duration_s` seconds (250 for 8 s)."""
        return self._frames_for(int(round(duration_s * self.sample_rate)))

    def _frames_for(self, n_samples: int) -> int:
        return math.ceil(n_samples / self.hop)

    def to(self, device) -> "MelCodec":
        self.filters = self.filters.to(device)
        self.filters_pinv = self.filters_pinv.to(device)
        self.window = self.window.to(device)
        return self

    # --- analysis / synthesis on a fixed frame grid -------------------------------------------
    # A grid of hop h: frame i is centred on the middle of samples [i*h, (i+1)*h), so the latent's
    # grid (h = hop) and the synthesis grid (h = synthesis_hop) span the same samples.
    def _frames(self, padded: torch.Tensor, n_frames: int, hop: int) -> torch.Tensor:
        # padded: (B, n_frames * hop + n_fft - hop) -> frames (B, n_frames, n_fft)
        return padded.unfold(-1, self.config.n_fft, hop)[:, :n_frames]

    def _stft(self, padded: torch.Tensor, n_frames: int, hop: int) -> torch.Tensor:
        return torch.fft.rfft(self._frames(padded, n_frames, hop) * self.window, dim=-1)    # (B, N, F)

    def _overlap_add(self, frames: torch.Tensor, hop: int) -> torch.Tensor:
        # frames (B, N, n_fft) -> (B, N * hop + n_fft - hop): each frame's hop-long chunks summed in place
        batch, n_frames, n_fft = frames.shape
        chunks = frames.reshape(batch, n_frames, n_fft // hop, hop)
        out = frames.new_zeros(batch, n_frames + chunks.shape[2] - 1, hop)
        for c in range(chunks.shape[2]):
            out[:, c:c + n_frames] += chunks[:, :, c]
        return out.reshape(batch, -1)

    def _istft(self, spectrum: torch.Tensor, hop: int) -> torch.Tensor:
        # Least-squares overlap-add: sum(w * frame) / sum(w^2), the inverse of `_stft`.
        # spectrum (B, N, F) -> (B, N * hop + n_fft - hop)
        frames = torch.fft.irfft(spectrum, n=self.config.n_fft, dim=-1) * self.window       # (B, N, n_fft)
        norm = self._overlap_add((self.window ** 2).expand(1, frames.shape[1], -1), hop)
        return self._overlap_add(frames, hop) / torch.clamp(norm, min=1e-3)

    def _edge(self, hop: int) -> int:
        return (self.config.n_fft - hop) // 2

    def _pad(self, wave: torch.Tensor, n_frames: int) -> torch.Tensor:
        # The latent's grid: reflect-pad the edges so the first and last frames are whole.
        total = n_frames * self.hop
        wave = torch.nn.functional.pad(wave, (0, total - wave.shape[-1]))
        edge = self._edge(self.hop)
        return torch.nn.functional.pad(wave[:, None], (edge, edge), mode="reflect")[:, 0]

    def _to_synthesis_grid(self, magnitude: torch.Tensor) -> torch.Tensor:
        """Magnitudes on the latent's frames (B, N, F), non-negative, onto the synthesis grid's,
        (B, N * r, F) with r = hop / synthesis_hop: interpolated geometrically between frame
        centres (held flat beyond the first and last), then each latent frame's r synthesis
        frames scaled, bin by bin, so that their mean power is the latent frame's.
        Geometric, because an onset is a jump of tens of dB that a linear ramp spreads as
        audible energy into the frames before it. The power kept per latent frame, because
        interpolating alone takes an event one latent frame long (a tick, a click) toward its
        silent neighbours, about 25 dB down: the mini-world's pendulum came back as a soft
        thud that the judging classifier no longer heard as one (0.43 against 0.86)."""
        step = self.config.synthesis_hop
        if step == self.hop:
            return magnitude
        batch, n_frames, n_bins = magnitude.shape
        ratio = self.hop // step
        centres = (torch.arange(n_frames * ratio, dtype=torch.float64) + 0.5) * step
        position = ((centres - self.hop / 2) / self.hop).clamp(0, n_frames - 1)
        before = position.floor().long()
        after = (before + 1).clamp(max=n_frames - 1)
        weight = (position - before).to(magnitude.dtype).to(magnitude.device)[None, :, None]
        # silence (0) is taken as MIN_MAGNITUDE, 200 dB under a full-scale tone, and the power
        # scaling below turns it back into 0
        log_magnitude = torch.log(magnitude.clamp_min(MIN_MAGNITUDE))
        fine = torch.exp(log_magnitude[:, before] * (1 - weight) + log_magnitude[:, after] * weight)
        fine = fine.reshape(batch, n_frames, ratio, n_bins)                    # (B, N, r, F)
        power = (fine ** 2).mean(dim=2, keepdim=True)                            # (B, N, 1, F)
        fine = fine * (magnitude[:, :, None] / power.sqrt())
        return fine.reshape(batch, n_frames * ratio, n_bins)

    # --- the codec contract ---------------------------------------------------------------------
    def encode(self, wave: torch.Tensor) -> torch.Tensor:
        # wave: (B, S) float in [-1, 1] -> latent (B, N, n_mels), N = ceil(S / hop)
        if wave.ndim != 2:
            raise InvalidInputError(f"The codec expects mono audio shaped (batch, samples); got {tuple(wave.shape)}.")
        wave = wave.float().to(self.window.device)
        n_frames = self._frames_for(wave.shape[-1])
        magnitude = self._stft(self._pad(wave, n_frames), n_frames, self.hop).abs()          # (B, N, F)
        return self.latent_of(magnitude @ self.filters.T)                     # (B, N, M)

    def mel_magnitude(self, latent: torch.Tensor) -> torch.Tensor:
        """The mel band magnitudes a latent stands for (non-negative), (B, N, M). A latent above
        MAX_LATENT (170 dB over a full-scale tone) stands for MAX_LATENT's magnitude: strong
        guidance (α or β far above the model's own) drives the latent to hundreds, whose
        exponential is infinite in float32 and made the track NaN; capped, it stays finite, so
        the overload is measured and limited like any other."""
        mel = torch.exp(latent.float().clamp(max=MAX_LATENT))
        return torch.clamp(mel - self.config.log_offset, min=0.0) if self.config.log_offset > 0 else mel

    def latent_of(self, mel: torch.Tensor) -> torch.Tensor:
        """The latent of non-negative mel band magnitudes (B, N, M), as `encode` forms it."""
        if self.config.log_offset > 0:
            return torch.log(mel + self.config.log_offset)
        return torch.log(torch.clamp(mel, min=self.config.log_floor))

    def match_level(self, latent: torch.Tensor, reference: torch.Tensor, strength: float) -> torch.Tensor:
        """`latent` with its level moved `strength` of the way (in dB) to `reference`'s: every mel
        magnitude of an item scaled by one gain, (E_ref / E)^(strength / 2), E the item's summed
        squared mel magnitudes. Only the level changes; the balance of bands and frames is kept.
        Why: guidance extrapolates band levels in this latent, so a guided track comes out louder
        than anything the model makes unguided (engine.sampler, `level_anchor`). An item without
        energy is left as it is."""
        # latent, reference: (B, N, M) codec latents; strength: 0 (unchanged) .. 1 (reference's level)
        if strength == 0:
            return latent
        mel = self.mel_magnitude(latent)
        energy = (mel ** 2).sum(dim=(1, 2), keepdim=True)                     # (B, 1, 1)
        reference_energy = (self.mel_magnitude(reference) ** 2).sum(dim=(1, 2), keepdim=True)
        audible = (energy > 0) & (reference_energy > 0)
        ratio = torch.where(audible, reference_energy / energy.clamp_min(torch.finfo(energy.dtype).tiny), 1.0)
        return self.latent_of(mel * ratio ** (strength / 2.0)).to(latent.dtype)

    def mel_to_magnitude(self, latent: torch.Tensor) -> torch.Tensor:
        # latent: (B, N, M) -> non-negative linear magnitude (B, N, F) whose mel projection fits exp(latent)
        filters = self.filters
        target = self.mel_magnitude(latent.to(filters.device))
        magnitude = torch.clamp(target @ self.filters_pinv.T, min=0.0) + 1e-6
        # Multiplicative NNLS updates keep the magnitude non-negative while reducing the fit error.
        # magnitude @ (filters.T @ filters), computed through the M mel bands (M << F).
        projected_target = target @ filters
        for _ in range(self.config.nnls_iterations):
            magnitude = magnitude * projected_target / ((magnitude @ filters.T) @ filters + 1e-9)
        return magnitude

    def decode(self, latent: torch.Tensor, seed: int = 0) -> torch.Tensor:
        # latent: (B, N, n_mels) -> wave (B, N * hop)
        if latent.ndim != 3 or latent.shape[-1] != self.latent_dim:
            raise InvalidInputError(
                f"The codec expects latents shaped (batch, frames, {self.latent_dim}); got {tuple(latent.shape)}.")
        step = self.config.synthesis_hop
        magnitude = self._to_synthesis_grid(self.mel_to_magnitude(latent))             # (B, N * hop / step, F)
        n_frames = magnitude.shape[1]
        generator = torch.Generator().manual_seed(seed)     # same latent -> same audio, in any batch
        phase = torch.rand((1, *magnitude.shape[1:]), generator=generator).to(magnitude.device) * (2 * math.pi)
        spectrum = magnitude * torch.exp(1j * phase)
        previous = spectrum
        for _ in range(self.config.griffin_lim_iterations):
            rebuilt = self._stft(self._istft(spectrum, step), n_frames, step)
            accelerated = rebuilt + self.config.momentum * (rebuilt - previous)
            previous = rebuilt
            # magnitude * exp(1j * angle(accelerated)), without the complex exponential
            spectrum = accelerated * (magnitude / accelerated.abs().clamp_min(1e-30))
        # No clamp: samples beyond full scale are the model's overload, measured downstream.
        edge = self._edge(step)
        return self._istft(spectrum, step)[:, edge:edge + n_frames * step]
