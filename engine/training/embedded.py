"""Training the embedded default model on the mini-world, end to end:

1. write mini-world scenes (mp4 + WAV) and single-source clips, and their dataset list;
2. extract features with the embedded encoders and codec (the same code as for real data);
3. train the base network (video + text -> the clip's full mixture; audio-text pairs with the
   empty video condition), as MMAudio is trained on VGGSound;
4. freeze it and train the NAG ControlNet on pairs of non-overlapping halves of each clip;
5. write the weights (post-hoc EMA, sigma_rel 0.05) as one safetensors file, with the command
   and the data seed recorded in its metadata.
"""

from __future__ import annotations

import json
import shlex
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import soundfile as sf
import torch

from stepfoley.engine.training.features import (FeatureSet, base_batches, controlnet_batches, extract_features,
                                      read_dataset_list)
from stepfoley.engine.training.objectives import base_flow_loss, controlnet_flow_loss
from stepfoley.engine.training.trainer import LossModule, TrainConfig, distributed_context, load_trained, train

# Scene seeds used for training; evaluation and the demo draw theirs from outside this range.
TRAINING_SEED_RANGE = (0, 100_000)


@dataclass(frozen=True)
class EmbeddedRecipe:
    scenes: int = 600
    single_source_clips: int = 1200
    base_steps: int = 5000
    controlnet_steps: int = 2500
    batch_size: int = 8
    data_seed: int = 0
    warmup_steps: int = 200
    checkpoint_every: int = 500


def write_miniworld_dataset(directory: Path, scenes: int, single_clips: int, seed: int, log=print) -> Path:
    """Scenes as real files plus a dataset list: one line per (scene, source) with that source's
    caption over the full mixture (MMAudio's VGGSound setting), and one per single-source clip."""
    from stepfoley.engine.miniworld import SOURCE_KINDS, make_scene, single_source_clip, write_scene

    directory.mkdir(parents=True, exist_ok=True)
    lines = []
    base = seed * 10_000 + TRAINING_SEED_RANGE[0]
    kinds = sorted(SOURCE_KINDS)
    for i in range(scenes):
        scene = make_scene(base + i)
        paths = write_scene(scene, directory / f"scene_{i:05d}", mux_audio=False, overwrite=True)
        for caption in source_captions(scene):
            lines.append({"video": str(paths["video"]), "audio": str(paths["mixture"]), "caption": caption})
        if (i + 1) % 100 == 0:
            log(f"mini-world: {i + 1}/{scenes} scenes")
    for j in range(single_clips):
        # One source alone: every other clip keeps its picture (a video-text-audio example
        # that ties the caption to one sound), the rest are audio-text pairs (empty video).
        clip = single_source_clip(base + scenes + j, kinds[j % len(kinds)])
        caption = clip.captions[0][(j // len(kinds)) % len(clip.captions[0])]
        if j % 2:
            paths = write_scene(clip, directory / f"single_{j:05d}", mux_audio=False, overwrite=True)
            lines.append({"video": str(paths["video"]), "audio": str(paths["mixture"]), "caption": caption})
        else:
            path = directory / f"single_{j:05d}.wav"
            sf.write(str(path), clip.mixture, clip.sample_rate, subtype="FLOAT")
            lines.append({"audio": str(path), "caption": caption})
    listing = directory / "dataset.jsonl"
    listing.write_text("".join(json.dumps(x) + "\n" for x in lines))
    return listing


def source_captions(scene) -> list[str]:
    """One caption per source of a scene: a paraphrase picked by the scene's seed."""
    return [paraphrases[(scene.seed + s) % len(paraphrases)] for s, paraphrases in enumerate(scene.captions)]


def _log_to(path: Path | None):
    """Rank 0 logs to stdout and to `path`; other ranks (path None) stay quiet."""
    def log(msg: str) -> None:
        if path is not None:
            print(msg, flush=True)
            with open(path, "a") as f:
                f.write(msg + "\n")
    return log


def train_embedded(work_dir: Path, out_path: Path, recipe: EmbeddedRecipe, device: torch.device) -> dict:
    from stepfoley.engine.controlnet import AudioControlNet
    from stepfoley.engine.embedded.model import build_embedded_model, controlnet_config, save_embedded_weights

    rank, world = distributed_context()
    log = _log_to(work_dir / "train.log" if rank == 0 else None)
    work_dir.mkdir(parents=True, exist_ok=True)
    figures: dict = {"recipe": asdict(recipe)}
    model = build_embedded_model(random_weights=True, device=device)  # encoders and codec; net re-initialized
    net = model.net
    net.initialize_weights()
    net.requires_grad_(True).train()
    net.empty_string_feat.requires_grad_(False)  # the text encoder's encoding of ""

    t0 = time.perf_counter()
    features_path = work_dir / "features.safetensors"
    if rank == 0 and not features_path.exists():
        listing = write_miniworld_dataset(work_dir / "data", recipe.scenes, recipe.single_source_clips,
                                          recipe.data_seed, log)
        extract_features(model, read_dataset_list(listing), features_path, log)
    if world > 1:
        torch.distributed.barrier()
    data = FeatureSet.load(features_path)
    figures["data_seconds"] = time.perf_counter() - t0
    log(f"data: {len(data)} examples in {figures['data_seconds']:.0f} s")

    mean, std = data.latent_stats()
    with torch.no_grad():
        net.latent_mean.copy_(mean)
        net.latent_std.copy_(std)
    net.latent_mean.requires_grad_(False)
    net.latent_std.requires_grad_(False)

    # Phase 1: the base network.
    base_cfg = TrainConfig(steps=recipe.base_steps, batch_size=recipe.batch_size,
                           warmup_steps=recipe.warmup_steps, seed=recipe.data_seed,
                           checkpoint_every=recipe.checkpoint_every)
    loss = LossModule({"net": net}, lambda parts, batch, g: base_flow_loss(parts["net"], batch, 0.1, g))
    batches = base_batches(data, net.normalize, recipe.batch_size, recipe.data_seed, rank, world)
    result = train(loss, net, batches, base_cfg, device, work_dir / "base", log)
    load_trained(net, result.params)
    figures["base"] = _phase_figures(result)

    # Phase 2: the NAG ControlNet, base frozen.
    net.requires_grad_(False).eval()
    controlnet = AudioControlNet(controlnet_config(net)).to(device)
    cn_cfg = TrainConfig(steps=recipe.controlnet_steps, batch_size=recipe.batch_size,
                         warmup_steps=recipe.warmup_steps, seed=recipe.data_seed + 1,
                         checkpoint_every=recipe.checkpoint_every)
    loss = LossModule({"net": net, "controlnet": controlnet},
                      lambda parts, batch, g: controlnet_flow_loss(parts["net"], parts["controlnet"], batch, 0.1, g))
    batches = controlnet_batches(data, net.normalize, recipe.batch_size, recipe.data_seed, rank, world)
    result = train(loss, controlnet, batches, cn_cfg, device, work_dir / "controlnet", log)
    load_trained(controlnet, result.params)
    figures["controlnet"] = _phase_figures(result)

    figures["total_seconds"] = time.perf_counter() - t0
    if rank == 0:
        command = "stepfoley train embedded " + " ".join(shlex.quote(a) for a in sys.argv[3:])
        save_embedded_weights(out_path, net, controlnet, metadata={
            "training_command": command, "data_seed": str(recipe.data_seed),
            "recipe": json.dumps(asdict(recipe)), "figures": json.dumps(figures)})
        log(f"wrote {out_path}")
    return figures


def _phase_figures(result) -> dict:
    tail = result.losses[-100:]
    return {"seconds": round(result.seconds, 1), "steps": result.steps,
            "samples_per_second": round(result.samples_per_second, 1),
            "final_loss": round(sum(tail) / max(len(tail), 1), 4)}
