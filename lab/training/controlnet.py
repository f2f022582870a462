"""Training a NAG ControlNet on top of official MMAudio weights (the paper's Sec. 4.2 and
App. D recipe): MMAudio frozen, VGGSound-style video clips plus audio-text clips, pairs of
non-overlapping halves of each clip (each encoded apart), AdamW 1e-4 (0.9, 0.95), wd 1e-6, 1k
warm-up, x0.1 at 80% and 90%, bf16 on GPU, post-hoc EMA sigma_rel 0.05."""

from __future__ import annotations

import os
from pathlib import Path

import torch

from stepfoley.engine.controlnet import AudioControlNet, ControlNetConfig, save_controlnet
from stepfoley.engine.errors import InvalidInputError
from stepfoley.engine.loading import load_mmaudio_model
from stepfoley.engine.weights import controlnet_path
from stepfoley.lab.training.features import (FEATURES_VERSION, FeatureSet, controlnet_batches, entries_digest,
                                             extract_features, features_match, features_metadata, read_dataset_list)
from stepfoley.lab.training.objectives import controlnet_flow_loss
from stepfoley.lab.training.trainer import (LossModule, TrainConfig, check_checkpoints, distributed_context,
                                            every_rank_ends_as_rank_zero, load_trained, train)


def train_controlnet_on_mmaudio(weights_dir: Path, variant: str | None, data_list: Path, work_dir: Path,
                                out_path: Path | None, depth: int, steps: int, batch_size: int,
                                warmup_steps: int, checkpoint_every: int, device: torch.device,
                                model=None, replace: bool = False) -> Path:
    """`model` (a FoleyModel) may be given instead of weights_dir, e.g. for tests. An existing
    ControlNet file (`out_path`, or the variant's in WEIGHTS/controlnets/) is refused before any
    training unless `replace`."""
    rank, world = distributed_context()
    # the base alone: a ControlNet already in controlnets/, even one made for another network,
    # is what this training replaces (it was loaded, or refused, though nothing reads it)
    model = model or load_mmaudio_model(weights_dir, variant, device, with_controlnet=False)
    variant = variant or model.model_id.removeprefix("mmaudio-").removesuffix("+nag")
    out = out_path or controlnet_path(weights_dir, variant)
    refuse_to_replace(out, replace)
    ControlNetConfig.for_base(model.net.config, depth=depth)  # a depth past the base's blocks: before the features
    work_dir.mkdir(parents=True, exist_ok=True)
    net = model.net.requires_grad_(False).eval()
    features = work_dir / "features.safetensors"
    entries = read_dataset_list(data_list)
    config = TrainConfig(steps=steps, batch_size=batch_size, warmup_steps=warmup_steps,
                         checkpoint_every=checkpoint_every,
                         # the features' version too: a checkpoint trained on other targets is not resumed
                         data=f"{model.model_id}|{entries_digest(entries)}|features {FEATURES_VERSION}")
    # refused before the features are made (hours for a large list; it was refused only after them)
    check_checkpoints({work_dir: config}, _said)
    posterior = hasattr(model.codec, "encode_posterior")
    current = lambda: features_match(features, entries, model.model_id, posterior)  # noqa: E731
    with every_rank_ends_as_rank_zero(rank, world, ready=current):  # rank 0's refusal is said on every rank
        if rank == 0 and not current():  # another list, model, version
            if "data_version" in features_metadata(features):  # replaced unasked, it took hours to render again
                raise InvalidInputError(f"{features} holds the training data of `stepfoley train embedded`; it is left "
                                        "as it is. Choose another --work folder for this ControlNet.")
            extract_features(model, entries, features)
    data = FeatureSet.load(features)
    # each block starts as a copy of the base's (ControlNet's "trainable copy"), as the embedded
    # one does; the layers it adds are drawn from the run's seed (from the process's generator,
    # one command run twice gave two ControlNets)
    torch.manual_seed(config.seed)
    controlnet = AudioControlNet.from_base(net, depth=depth).to(device)
    loss = LossModule({"net": net, "controlnet": controlnet},
                      lambda parts, batch, g: controlnet_flow_loss(parts["net"], parts["controlnet"], batch, 0.1, g))
    batches = controlnet_batches(data, net.normalize, batch_size, config.seed, rank, world)
    result = train(loss, controlnet, batches, config, device, work_dir)
    load_trained(controlnet, result.params)
    # rank 0 alone writes it: the others ended as if it had (torchrun said only that rank 0 failed)
    with every_rank_ends_as_rank_zero(rank, world):
        if rank == 0:
            save_controlnet(out, controlnet, overwrite=replace)
    return out


def refuse_to_replace(out: Path, replace: bool) -> None:
    """InvalidInputError where the ControlNet file `out` is there and not to be replaced."""
    if os.path.lexists(out) and not replace:
        raise InvalidInputError(f"{out} already exists; choose another --out, or add --force to replace it "
                                "(nothing was trained).")


def _said(setting: str, recorded: dict, config: TrainConfig) -> str:
    """A setting of a checkpoint (`recorded`) that `config` changes, in words (check_checkpoints):
    its value then and now, and the dataset as which part of it changed."""
    before, now = str(recorded[setting]), str(getattr(config, setting))
    if setting != "data":
        return f"{setting} {before}, now {now}"

    def clips_and_model(data: str) -> tuple[str, ...]:
        # "model|list digest|features N"; before the version was recorded, "model|list digest",
        # and the model's id named a ControlNet that lay in controlnets/ ("+nag")
        model, *rest = data.split("|")
        return (model.removesuffix("+nag"), *rest[:1])

    if clips_and_model(before) != clips_and_model(now):
        return "the dataset list or the model"
    version = before.split("|features ")[1] if "|features " in before else "an older one"
    return f"the training features' version ({version}, now {FEATURES_VERSION})"
