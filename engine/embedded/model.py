"""The embedded default model: the project's MM-DiT, NAG ControlNet and loudness ControlNet at a
small size, with cheap CPU encoders and a log-mel codec, trained on the mini-world
(lab/training/embedded.py).

Its weights ship inside the package (stepfoley_mini.safetensors, a few MB), so the engine runs
on a CPU with nothing to download. `random_weights=True` builds the same model with random
weights: the same code path for tests, and clearly labelled as meaningless sound.
"""

from __future__ import annotations

import json
import os
import stat
from dataclasses import asdict
from pathlib import Path

import torch
from safetensors import safe_open
from safetensors.torch import load_file

from stepfoley.engine.controlnet import AudioControlNet, ControlNetConfig
from stepfoley.engine.embedded.codec import DECODER_FIELDS, MelCodec, MelCodecConfig, synthesis_hop_for
from stepfoley.engine.embedded.encoders import CLIP_DIM, SYNC_DIM, EmbeddedVideoEncoder
from stepfoley.engine.embedded.text import EmbeddedTextEncoder
from stepfoley.engine.checkpoints import (check_finite, load_strict, reading_error, save_safetensors_atomic,
                                          unreadable_error)
from stepfoley.engine.errors import CheckpointError
from stepfoley.engine.mmaudio import MMAudio, MMAudioConfig
from stepfoley.engine.pipeline import FoleyModel
from stepfoley.request import GuidanceDefaults

WEIGHTS_PATH = Path(__file__).with_name("stepfoley_mini.safetensors")
CONTROLNET_DEPTH = 2
LOUDNESS_DEPTH = 1  # the loudness ControlNet: one block reads a curve (one value per latent frame)


def embedded_net_config(codec: MelCodec) -> MMAudioConfig:
    return MMAudioConfig(
        latent_dim=codec.latent_dim, clip_dim=CLIP_DIM, sync_dim=SYNC_DIM,
        text_dim=EmbeddedTextEncoder.text_dim, hidden_dim=64, depth=4, fused_depth=2, num_heads=2,
        latent_seq_len=codec.latent_length(8.0), clip_seq_len=64, sync_seq_len=192, v2=False,
        name="stepfoley-mini")


def controlnet_config(net: MMAudio) -> ControlNetConfig:
    return ControlNetConfig.for_base(net.config, depth=CONTROLNET_DEPTH)


def loudness_config(net: MMAudio) -> ControlNetConfig:
    return ControlNetConfig.for_base(net.config, depth=LOUDNESS_DEPTH, condition_dim=1)


def _randomize(module: torch.nn.Module, seed: int) -> None:
    """Random values for every parameter (the golden fixtures' rule), so random-weight outputs
    are not the silence that a zero-initialized output layer would give."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in module.named_parameters():
            if p.ndim >= 2:
                p.copy_(torch.randn(p.shape, generator=g) / max(1, p[0].numel()) ** 0.5)
            elif name.endswith("weight"):
                p.copy_(1 + 0.1 * torch.randn(p.shape, generator=g))
            else:
                p.copy_(0.1 * torch.randn(p.shape, generator=g))


def remedy(path: str | os.PathLike) -> str:
    """What to do about the embedded weights at `path` when they cannot serve, as a sentence. The
    packaged file comes back with a reinstall; a user's own (--embedded-weights, --weights FILE)
    does not, and a reinstall left it as it was."""
    try:
        packaged = os.path.samefile(path, WEIGHTS_PATH)
    except (OSError, ValueError):  # one of them not there
        packaged = os.path.realpath(path) == os.path.realpath(WEIGHTS_PATH)
    if packaged:
        return "Reinstall StepFoley, or train them again (`stepfoley train embedded`)."
    return ("Give the file `stepfoley train embedded` wrote (its --out), or train them again (`stepfoley train "
            "embedded --out FILE`).")


def codec_config_of(meta: dict[str, str], path: str | os.PathLike | None = None) -> MelCodecConfig:
    """The codec a weights file (at `path`, for the advice) was trained with (metadata
    "codec_config"), decoding as this version decodes (its decoder settings, DECODER_FIELDS, are
    not the file's: they never shaped the latent the network learned); weights written before the
    codec was recorded were all trained with the first latent, ln(max(mel, 1e-5))."""
    if "codec_config" not in meta:
        return MelCodecConfig(log_offset=0.0)
    try:
        recorded = json.loads(meta["codec_config"])
        if not isinstance(recorded, dict):
            raise ValueError("not a JSON object")
        latent = {k: v for k, v in recorded.items() if k not in DECODER_FIELDS}
        grid = latent.get("hop", MelCodecConfig.hop), latent.get("n_fft", MelCodecConfig.n_fft)
        return MelCodecConfig(**latent, synthesis_hop=synthesis_hop_for(*grid))
    except (TypeError, ValueError) as e:
        where, advice = ("", "Reinstall StepFoley or train the model again.") if path is None \
            else (f" {path}", remedy(path))
        raise CheckpointError(f"The embedded weights{where} record a codec this version cannot build ({e}). "
                              f"{advice}") from None


def build_embedded_model(random_weights: bool = False, device: torch.device | str = "cpu",
                         weights_path: str | os.PathLike | None = None) -> FoleyModel:
    path = Path(weights_path or WEIGHTS_PATH)
    tensors, meta = ({}, {}) if random_weights else _read_weights(path)
    codec = MelCodec() if random_weights else MelCodec(codec_config_of(meta, path))
    text_encoder = EmbeddedTextEncoder()
    net = MMAudio(embedded_net_config(codec))
    controlnet = AudioControlNet(controlnet_config(net))
    loudness = None  # random weights have none: a random curve reader would only scramble the sound
    if random_weights:
        net.initialize_weights()
        _randomize(net, seed=0)
        _randomize(controlnet, seed=1)
        with torch.no_grad():
            net.latent_mean.zero_()
            net.latent_std.fill_(1.0)
        model_id, note = "stepfoley-mini-random", "random weights: the sound is meaningless (tests only)"
        defaults = GuidanceDefaults()
    else:
        loudness = AudioControlNet(loudness_config(net))
        model_id, defaults, has_loudness = load_embedded_weights(path, tensors, meta, net, controlnet, loudness)
        loudness = loudness if has_loudness else None
        note = ""
    with torch.no_grad():
        net.empty_string_feat.copy_(text_encoder.encode([""])[0])
    model = FoleyModel(model_id=model_id, net=net.eval().requires_grad_(False), codec=codec,
                       video_encoder=EmbeddedVideoEncoder(), text_encoder=text_encoder,
                       controlnet=controlnet.eval().requires_grad_(False), note=note, defaults=defaults,
                       edge_context=True,
                       loudness_control=None if loudness is None else loudness.eval().requires_grad_(False))
    return model.to(torch.device(device))


def load_embedded_model(device: torch.device | str = "cpu", random_weights: bool = False) -> FoleyModel:
    return build_embedded_model(random_weights=random_weights, device=device)


def save_embedded_weights(path: str | os.PathLike, net: MMAudio, controlnet: AudioControlNet, codec: MelCodec,
                          metadata: dict[str, str], loudness: AudioControlNet | None = None,
                          replace: bool = True) -> Path:
    """One safetensors file: `net.*`, `controlnet.*` and `loudness.*` (when trained), the configs
    (the codec's too: the latent the network was trained in) and the training record. An
    existing file is replaced only with `replace` (retraining the packaged weights in place)."""
    tensors = {f"net.{k}": v.detach().cpu().contiguous() for k, v in net.state_dict().items()}
    tensors.update({f"controlnet.{k}": v.detach().cpu().contiguous() for k, v in controlnet.state_dict().items()})
    meta = {**metadata, "net_config": json.dumps({k: v for k, v in vars(net.config).items()}),
            "controlnet_config": json.dumps(vars(controlnet.config)),
            "codec_config": json.dumps(asdict(codec.config))}
    if loudness is not None:
        tensors.update({f"loudness.{k}": v.detach().cpu().contiguous() for k, v in loudness.state_dict().items()})
        meta["loudness_config"] = json.dumps(vars(loudness.config))
    return save_safetensors_atomic(tensors, path, meta, overwrite=replace)


def write_guidance_defaults(path: str | os.PathLike, defaults: GuidanceDefaults, provenance: dict,
                            chosen: str = "alpha") -> Path:
    """Record `defaults` as the model's own (metadata "guidance_defaults", published in the engine's
    capabilities) and how the default named `chosen` was chosen (JSON; α's under
    "guidance_defaults_provenance", another's under "<chosen>_provenance"), rewriting the weights
    file atomically with the same tensors and every other metadata key kept."""
    path = Path(path)
    tensors, meta = _read_weights(path)
    meta["guidance_defaults"] = json.dumps(asdict(defaults))
    meta["guidance_defaults_provenance" if chosen == "alpha" else f"{chosen}_provenance"] = json.dumps(provenance)
    return save_safetensors_atomic(tensors, path, meta, overwrite=True)


def load_embedded_weights(path: Path, tensors: dict[str, torch.Tensor], meta: dict[str, str], net: MMAudio,
                          controlnet: AudioControlNet, loudness: AudioControlNet) -> tuple[str, GuidanceDefaults, bool]:
    """Loads the weights read from `path` (`_read_weights`) into `net`, `controlnet` and, when
    the file has one (weights trained before it did not), the loudness ControlNet `loudness`;
    returns the model id, the guidance defaults recorded with them (metadata
    "guidance_defaults"; the paper's when absent) and whether a loudness ControlNet was loaded."""
    advice = f"The file is damaged or from another version. {remedy(path)}"
    loudness_tensors = {k[9:]: v for k, v in tensors.items() if k.startswith("loudness.")}
    # a change that keeps every tensor's shape (the number of heads) would load into the wrong network
    for key, module in (("net_config", net), ("controlnet_config", controlnet),
                        ("loudness_config", loudness if loudness_tensors else None)):
        if module is None or key not in meta:
            continue
        try:
            recorded = json.loads(meta[key])
        except ValueError:
            raise CheckpointError(f"The {key} recorded in {path} is not JSON. {advice}") from None
        built = json.loads(json.dumps(vars(module.config)))
        differ = sorted(k for k in recorded if k in built and recorded[k] != built[k]) if isinstance(recorded, dict) \
            else ["(not an object)"]
        if differ:
            raise CheckpointError(f"{path} was trained with another {key.replace('_', ' ')} than this version "
                                  f"builds ({', '.join(differ)}). {advice}")
    # checked once, whole: the three networks' keys without their prefixes would not say which
    # holds it, and the file's advice is the one to give (each network's load checks no more)
    check_finite(tensors, path, f"The training that wrote them went wrong, or the file is damaged. {remedy(path)}")
    net.load_weights({k[4:]: v for k, v in tensors.items() if k.startswith("net.")}, advice, source=str(path),
                     values_checked=True)
    load_strict(controlnet, {k[11:]: v for k, v in tensors.items() if k.startswith("controlnet.")},
                f"The ControlNet in {path} does not fit the embedded model's", advice, source=str(path),
                values_checked=True)
    if loudness_tensors:
        load_strict(loudness, loudness_tensors, f"The loudness ControlNet in {path} does not fit the embedded model's",
                    advice, source=str(path), values_checked=True)
    try:
        defaults = GuidanceDefaults(**json.loads(meta["guidance_defaults"])) if "guidance_defaults" in meta \
            else GuidanceDefaults()
    except (TypeError, ValueError) as e:
        raise CheckpointError(f"The guidance defaults recorded in {path} are not usable ({e}). {advice}") from None
    return meta.get("model_id", "stepfoley-mini"), defaults, bool(loudness_tensors)


def _read_weights(path: Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The tensors and metadata of an embedded weights file, with errors a user can act on."""
    try:
        present = stat.S_ISREG(os.stat(path).st_mode)
    except PermissionError:  # in a folder this user may not enter (Path.is_file() says False there from 3.14)
        raise unreadable_error(path) from None
    except (OSError, ValueError):
        present = False
    if not present:
        raise CheckpointError(
            f"The embedded model's weights {path} are missing. {remedy(path)}")
    try:
        tensors = load_file(str(path))
        with safe_open(str(path), "pt") as f:
            meta = dict(f.metadata() or {})
    except Exception as e:  # safetensors raises several types for damaged files
        raise reading_error(path) or CheckpointError(
            f"The embedded model's weights {path} cannot be read ({e}). {remedy(path)}") from None
    return tensors, meta


def check_weights_file(path: str | os.PathLike) -> None:
    """CheckpointError unless the file given as --weights holds the embedded model's network,
    read from its header alone, so that a command line is checked before anything loads."""
    why = None
    try:
        with safe_open(str(Path(path).expanduser()), "pt") as f:
            if not any(key.startswith("net.") for key in f.keys()):
                why = "it holds none of its network's weights"
    except Exception as e:  # safetensors raises several types for files that are not its own
        if (error := reading_error(Path(path).expanduser())) is not None:  # it may be one, that cannot be read
            raise error from None
        why = f"it cannot be read as one: {e}"
    if why:
        raise CheckpointError(f"{path} is not a file of the embedded model's weights ({why}). --weights takes a "
                              "folder of MMAudio's weights (the one that holds weights/ and ext_weights/), or a "
                              "file that `stepfoley train embedded` wrote.")
