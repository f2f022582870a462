"""NVIDIA's BigVGAN-v2 44.1 kHz vocoder from its downloaded directory, without any hub.

The directory is the Hugging Face repository `nvidia/bigvgan_v2_44khz_128band_512x` as
downloaded: `config.json` (hyper-parameters) and `bigvgan_generator.pt` (a dict whose
"generator" entry is the state dict). The network is engine.codec.bigvgan.BigVGAN; only
the final-layer switches differ from v1, and they come from config.json.

NVIDIA's own `bigvgan` package is not used: it pulls huggingface-hub, librosa, nnAudio,
pesq, auraloss, tensorboard and matplotlib for what is, at inference, this one module.
"""

from __future__ import annotations

import json
from dataclasses import fields
from pathlib import Path
from typing import Callable

import torch

from stepfoley.engine.codec.bigvgan import BigVGAN, BigVGANConfig, load_generator
from stepfoley.engine.errors import CheckpointError

CONFIG_FILE = "config.json"
GENERATOR_FILE = "bigvgan_generator.pt"
GENERATOR_ENTRY = "generator"


def read_config(directory: Path) -> tuple[BigVGANConfig, dict]:
    """The generator config and the raw dict (for sampling_rate, num_mels, hop_size)."""
    path = Path(directory) / CONFIG_FILE
    if not path.is_file():
        raise CheckpointError(
            f"The BigVGAN-v2 folder {directory} has no {CONFIG_FILE}. Download the whole "
            "nvidia/bigvgan_v2_44khz_128band_512x repository into that folder (docs/weights.md)."
        )
    try:
        raw = json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise CheckpointError(f"{path} is not readable JSON ({e}); download it again.") from None
    return BigVGANConfig.from_dict(raw), raw


def config_problems(directory: Path) -> list[str]:
    """What is wrong with the config.json of a BigVGAN-v2 folder for MMAudio's 44.1 kHz models:
    unreadable, or describing another vocoder than nvidia/bigvgan_v2_44khz_128band_512x. Said
    before anything loads (it was read only after the flow network had, and a config of another
    BigVGAN was blamed on its weights file)."""
    try:
        config, _ = read_config(Path(directory))
    except CheckpointError as e:
        return [str(e)]
    except (TypeError, ValueError) as e:  # a field of the wrong kind: BigVGANConfig.from_dict
        return [f"{CONFIG_FILE} is not a BigVGAN config ({e}); download it again"]
    official = BigVGANConfig.preset("v2_44k_512x")
    differs = [f"{f.name} {getattr(config, f.name)}, not {getattr(official, f.name)}" for f in fields(BigVGANConfig)
               if getattr(config, f.name) != getattr(official, f.name)]
    if not differs:
        return []
    return [f"{CONFIG_FILE} describes another BigVGAN ({'; '.join(differs)}): download the config.json of "
            "nvidia/bigvgan_v2_44khz_128band_512x again"]


def load_bigvgan_v2(directory: Path,
                    read_weights: Callable[[Path, str | None], tuple[dict[str, torch.Tensor], str]]) -> BigVGAN:
    """Build and load the vocoder of a BigVGAN-v2 folder. `read_weights(path, entry)` reads a
    checkpoint file and names the file read (engine.weights.read_weights: it prefers a
    converted .safetensors copy beside the .pt)."""
    directory = Path(directory)
    config, _ = read_config(directory)
    state_dict, source = read_weights(directory / GENERATOR_FILE, GENERATOR_ENTRY)
    return load_generator(state_dict, config, source=source)
