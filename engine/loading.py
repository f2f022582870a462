"""Loading a FoleyModel: the embedded mini-world model (default), random weights for tests,
or the real MMAudio stack from a weights directory laid out as docs/weights.md says."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Mapping

import torch

from stepfoley.engine.errors import CheckpointError, InvalidInputError
from stepfoley.engine.pipeline import FoleyModel
from stepfoley.request import GuidanceDefaults

if TYPE_CHECKING:  # the loaders themselves are imported lazily, when a stack is loaded
    from stepfoley.engine.codec.bigvgan import BigVGANConfig
    from stepfoley.engine.codec.vae import VAEConfig
    from stepfoley.engine.features.clip import ClipConfig
    from stepfoley.engine.features.synchformer import SynchformerConfig
    from stepfoley.engine.mmaudio import MMAudio, MMAudioConfig
    from stepfoley.engine.weights import WeightsReport

MMAUDIO_VARIANTS = {
    # variant: (flow checkpoint, codec mode)
    "small_16k": ("weights/mmaudio_small_16k", "16k"),
    "small_44k": ("weights/mmaudio_small_44k", "44k"),
    "medium_44k": ("weights/mmaudio_medium_44k", "44k"),
    "large_44k": ("weights/mmaudio_large_44k", "44k"),
    "large_44k_v2": ("weights/mmaudio_large_44k_v2", "44k"),
}


@dataclass(frozen=True)
class StackConfigs:
    """Network sizes that replace the official ones, each handed to its own loader (tests and
    benchmarks with reduced random-weight files in the official layout). None = official:
    MMAudioConfig.preset(variant), VAEConfig.preset(mode), the 16 kHz BigVGAN preset, the
    full Synchformer, and for CLIP the folder's open_clip_config.json. The 44.1 kHz
    BigVGAN-v2 always takes its sizes from its folder's config.json, so `vocoder` only
    applies to the 16 kHz models."""

    net: MMAudioConfig | None = None
    vae: VAEConfig | None = None
    vocoder: BigVGANConfig | None = None
    synchformer: SynchformerConfig | None = None
    clip: ClipConfig | None = None


def _checkpoint_path(weights_dir: Path, stem: str) -> Path:
    """Prefer the .safetensors copy (read without unpickling), else the official .pth."""
    from stepfoley.engine.weights import file_to_read

    found = file_to_read(weights_dir / (stem + ".pth"))
    if found is not None:
        return found
    raise CheckpointError(f"{weights_dir / (stem + '.pth')} is missing: the MMAudio flow network weights. "
                          "Run `stepfoley weights check DIR` to see what the directory holds.")


def load_flow_weights(net: MMAudio, state_dict: Mapping[str, torch.Tensor], source: str = "",
                      assign: bool = False) -> None:
    """`net.load_weights`, with the advice a sound designer needs when the file does not fit:
    which file was read (`source`), which file the chosen model reads and, when the weights are
    another official model's, which."""
    from stepfoley.engine.mmaudio import infer_preset

    def advice() -> str:
        other = infer_preset(state_dict)
        return ((f"The file read: {source}. " if source else "")
                + "Check that the weights file belongs to the chosen model (for example "
                "mmaudio_large_44k_v2.pth needs the large_44k_v2 model)."
                + (f" These weights look like the '{other}' model." if other is not None else ""))
    net.load_weights(state_dict, advice, assign=assign, source=source or "(in memory)")


def check_variant(variant: str) -> str:
    """`variant` when it names an MMAudio model; InvalidInputError otherwise."""
    if variant not in MMAUDIO_VARIANTS:
        raise InvalidInputError(f"Unknown model variant '{variant}': use one of {', '.join(MMAUDIO_VARIANTS)}.")
    return variant


def chosen_variant(report: WeightsReport, variant: str | None) -> str:
    """The variant to load from a weights folder (`report`, check_weights_dir's): `variant`,
    else the first whose flow network is there, one with every file it needs first.
    CheckpointError when none is."""
    if variant is not None:
        return check_variant(variant)
    present = [v for v in MMAUDIO_VARIANTS if report.files[f"flow_{v}"].present]
    if not present:
        raise CheckpointError(f"No MMAudio flow network found in {report.root}/weights "
                              f"(expected one of {', '.join(s + '.pth' for s, _ in MMAUDIO_VARIANTS.values())})."
                              + "".join(f" Not read: {advice}." for advice in report.misplaced))
    return next((v for v in present if report.ready(v)), present[0])


def unusable_problem(report: WeightsReport, variant: str, misplaced: tuple = (),
                     with_controlnet: bool = True) -> str | None:
    """Why the weights folder of `report` cannot run `variant` (its files missing or wrong, as
    the report found them), None when it can. `misplaced`: the advice for files put elsewhere;
    `with_controlnet=False`: its NAG ControlNet is not asked about."""
    from stepfoley.engine.weights import controlnet_name

    missing = [n for n in report.unusable(variant) if with_controlnet or n != controlnet_name(variant)]
    if not missing:
        return None

    def said(r) -> str:  # each problem is a sentence of its own, ended here
        named = f"{r.path.relative_to(report.root)} ({r.what})"
        if not r.present:
            return f"{named} is {r.missing}"
        return named + ": " + "; ".join(p.rstrip(".") for p in r.problems)

    return (f"The weights folder {report.root} cannot run {variant}: "
            + "; ".join(said(report.files[n]) for n in missing)
            + "." + "".join(f" Not read: {advice}." for advice in misplaced)
            + " See docs/weights.md; `stepfoley weights check` lists every file.")


def load_mmaudio_model(weights_dir: str | Path, variant: str | None, device: torch.device,
                       configs: StackConfigs | None = None, with_controlnet: bool = True) -> FoleyModel:
    """`with_controlnet=False`: the base alone, whatever file controlnets/ holds (what training a
    new one reads: one made for another network is what it replaces)."""
    from stepfoley.engine.weights import VARIANTS, check_weights_dir, controlnet_name, readable_weights

    # Every file the variant needs is looked for first: a missing CLIP is said in a second, not
    # after gigabytes of flow network and VAE have loaded.
    report = check_weights_dir(weights_dir, verify=False)
    weights_dir, misplaced = report.root, report.misplaced
    variant = chosen_variant(report, variant)
    if configs is None:
        # The chosen model's files are read as far as their headers (seconds, even for a
        # multi-GB file): a damaged vocoder or a CLIP of the wrong size is said before the flow
        # network loads. Reduced test stacks have other sizes than the manifests.
        report = check_weights_dir(weights_dir, only=[*VARIANTS[variant],
                                                      *([controlnet_name(variant)] if with_controlnet else [])])
    problem = unusable_problem(report, variant, misplaced, with_controlnet)
    if problem:
        raise CheckpointError(problem)
    with readable_weights(weights_dir):
        return _load_mmaudio_stack(weights_dir, variant, device, configs, with_controlnet)


def _load_mmaudio_stack(weights_dir: Path, variant: str, device: torch.device,
                        configs: StackConfigs | None, with_controlnet: bool = True) -> FoleyModel:
    from stepfoley.engine.checkpoints import load_state_dict_file
    from stepfoley.engine.codec.mmaudio_codec import MMAudioCodec
    from stepfoley.engine.controlnet import load_controlnet
    from stepfoley.engine.features.mmaudio_features import MMAudioTextEncoder, MMAudioVideoEncoder
    from stepfoley.engine.mmaudio import MMAudio, MMAudioConfig
    from stepfoley.engine.weights import controlnet_path, described_source

    stem, mode = MMAUDIO_VARIANTS[variant]
    configs = configs or StackConfigs()
    config = configs.net or MMAudioConfig.preset(variant)
    # Built on the meta device and given the file's tensors: a full-size network (4 GB for the
    # large ones) is never held twice, nor initialized only to be overwritten.
    with torch.device("meta"):
        net = MMAudio(config)
    source = _checkpoint_path(weights_dir, stem)
    load_flow_weights(net, load_state_dict_file(source), described_source(weights_dir / (stem + ".pth"), source),
                      assign=True)
    net = net.float()  # a half-precision file's tensors, as the network computes
    controlnet = None  # one for another model was refused by load_mmaudio_model's check, before anything loaded
    cn_path = controlnet_path(weights_dir, variant)
    if with_controlnet and cn_path.is_file():
        controlnet = load_controlnet(cn_path, config)
    codec = MMAudioCodec.from_directory(weights_dir, mode, vae_config=configs.vae,
                                        vocoder_config=configs.vocoder)
    # Encoders are built on `device` (FoleyModel.to cannot move them); one CLIP serves both.
    video_encoder = MMAudioVideoEncoder.from_directory(
        weights_dir, device=device, synchformer_config=configs.synchformer, clip_config=configs.clip)
    text_encoder = MMAudioTextEncoder.from_directory(weights_dir, clip=video_encoder.clip, device=device)
    return FoleyModel(
        model_id=f"mmaudio-{variant}" + ("+nag" if controlnet else ""),
        net=net.eval().requires_grad_(False), codec=codec,
        video_encoder=video_encoder, text_encoder=text_encoder,
        controlnet=controlnet, device=device,
        # without the ControlNet NAG cannot run: a request that leaves the method out gets plain CFG
        defaults=GuidanceDefaults() if controlnet else GuidanceDefaults(method="independent"),
        note="" if controlnet else (f"no NAG ControlNet at {cn_path}: only 'independent', 'negative_prompt' and "
                                    "'text_boost' work ('independent' is the default)"),
    ).to(device)


def load_foley_model(weights_dir: str | Path | None = None, variant: str | None = None,
                     device: torch.device | None = None, configs: StackConfigs | None = None) -> FoleyModel:
    """`weights_dir`: a folder of MMAudio's weights, or a file of the embedded model's (what
    `stepfoley train embedded` writes), None for the packaged one. `configs` (reduced sizes for
    the MMAudio stack) needs a weights directory."""
    from stepfoley.engine.weights import check_no_variant, is_weights_file

    device = device or torch.device("cpu")
    weights_file = weights_dir is not None and is_weights_file(weights_dir)
    if weights_dir is not None and not weights_file:
        return load_mmaudio_model(weights_dir, variant, device, configs=configs)
    if configs is not None:
        raise InvalidInputError("Reduced stack configs apply only to an MMAudio weights directory.")
    from stepfoley.engine.embedded.model import build_embedded_model, check_weights_file, load_embedded_model

    if weights_file:
        weights_dir = Path(weights_dir).expanduser()  # as a folder is: `--weights=~/w.safetensors` reaches here so
        check_no_variant(weights_dir, variant)
        check_weights_file(weights_dir)
        return build_embedded_model(device=device, weights_path=weights_dir)

    if variant in (None, "embedded"):
        return load_embedded_model(device=device)
    if variant == "tiny-random":
        return load_embedded_model(device=device, random_weights=True)
    raise InvalidInputError(f"Unknown model '{variant}' without a weights directory: use 'embedded' or "
                            "'tiny-random', or give --weights DIR for the MMAudio variants.")
