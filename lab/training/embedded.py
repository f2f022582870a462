"""Training the embedded default model on the mini-world, end to end:

1. render long mini-world scenes and turn them into features in memory
   (lab/training/miniworld_data.py: VGGSound-style captions, pairs of windows for NAG);
2. train the base network (video + caption -> a mixture the captioned sound leads; audio-text
   pairs with the empty video condition), as MMAudio is trained on VGGSound;
3. freeze it and train the NAG ControlNet, a trainable copy of the blocks its residuals feed,
   on non-overlapping 8 s windows of the same scene, the condition at -20 LUFS like x̃;
4. with the base still frozen, train the loudness ControlNet (one block) to follow a target's
   loudness per latent frame, Draw an Audio's time-loudness condition, on targets most of which
   a drawn envelope shapes (a curve sets the level, the picture and caption the sounds);
5. print held-out losses (no / same-clip / other-clip condition; no / own / other curve) and the
   time split, and write the weights (post-hoc EMA, sigma_rel 0.05) as one safetensors file with
   the command, the data seed and the figures in its metadata.

`extend_with_loudness` runs step 4 alone on weights trained before it existed: the same data
recipe, the shipped base and NAG ControlNet untouched.
"""

from __future__ import annotations

import json
import math
import shlex
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from stepfoley.atomic import sweep_stale_parts
from stepfoley.engine.errors import InvalidInputError
from stepfoley.lab.training.miniworld_data import (DATA_VERSION, DOMINANCE_DB_MOST, WINDOW_S, DataRecipe,
                                                   EmbeddedData, StaleFeaturesError, base_batches, build_embedded_data,
                                                   controlnet_batches, held_out_controlnet_losses,
                                                   held_out_loudness_losses)
from stepfoley.lab.training.features import features_metadata
from stepfoley.lab.training.objectives import base_flow_loss, controlnet_flow_loss, loudness_flow_loss
from stepfoley.lab.training import trainer
from stepfoley.lab.training.trainer import (LossModule, TrainConfig, distributed_context,
                                            every_rank_ends_as_rank_zero, load_trained, train)

# Scene seeds used for training; evaluation and the demo draw theirs from outside this range.
TRAINING_SEED_RANGE = (0, 100_000)


DATA_SEED_STRIDE = 10_000  # scenes each data seed may render before the next one's


def first_training_seed(data_seed: int) -> int:
    """The seed of the first scene a recipe of this data seed renders (scene i: this + i)."""
    return TRAINING_SEED_RANGE[0] + data_seed * DATA_SEED_STRIDE


@dataclass(frozen=True)
class EmbeddedRecipe:
    data: DataRecipe = field(default_factory=DataRecipe)
    base_steps: int = 8000
    controlnet_steps: int = 3500
    # Higher than App. D's 1e-4: with batches of 8 and a few thousand steps, 1e-4 leaves the base
    # undertrained and the ControlNet ignoring its condition (held-out losses in the README).
    base_lr: float = 4e-4
    controlnet_lr: float = 1e-3
    batch_size: int = 8  # per process
    warmup_steps: int = 200
    checkpoint_every: int = 500
    controlnet_depth: int = 2
    loudness_steps: int = 1500
    loudness_lr: float = 1e-3
    loudness_depth: int = 1
    data_workers: int = 2  # processes rendering scenes


def _log_to(path: Path | None):
    """Rank 0 logs to stdout and to `path`; other ranks (path None) stay quiet. Where `path`
    cannot take a line (a full disk, the work folder gone), that is said once on stderr and the
    lines go on to stdout alone: the file is a copy of what is shown, not worth the training's
    hours, and rank 0 stopping alone there ended the other ranks with a collective's error."""
    failed = False

    def log(msg: str) -> None:
        nonlocal failed
        if path is None:
            return
        print(msg, flush=True)
        if failed:
            return
        try:
            with open(path, "a") as f:
                f.write(msg + "\n")
        except OSError as error:
            failed = True
            print(f"stepfoley train: the log {path} cannot be written ({error.strerror or error}); the training goes "
                  "on, its lines shown here only.", file=sys.stderr, flush=True)
    return log


def phase_configs(recipe: EmbeddedRecipe) -> dict[str, TrainConfig]:
    """Each phase's training settings, by its folder in the work folder: the base, the NAG
    ControlNet and the loudness ControlNet, each with a seed of its own."""
    # the data's version too: features of an older one are rebuilt (_training_data), and a
    # checkpoint trained on them was resumed over the new ones without a word
    data = json.dumps({**asdict(recipe.data), "data_version": DATA_VERSION})

    def phase(steps: int, lr: float, seed_offset: int) -> TrainConfig:
        return TrainConfig(steps=steps, batch_size=recipe.batch_size, lr=lr, warmup_steps=recipe.warmup_steps,
                           seed=recipe.data.seed + seed_offset, checkpoint_every=recipe.checkpoint_every,
                           data=data)

    return {"base": phase(recipe.base_steps, recipe.base_lr, 0),
            "controlnet": phase(recipe.controlnet_steps, recipe.controlnet_lr, 1),
            "loudness": phase(recipe.loudness_steps, recipe.loudness_lr, 2)}


def check_checkpoints(work_dir: Path, phases: dict[str, TrainConfig]) -> None:
    """Every phase's checkpoint in `work_dir` against its settings, before any work: one of
    another recipe was found only once the data was rendered again and the phases before it
    were trained. Raises CheckpointError naming every stale one."""
    trainer.check_checkpoints({work_dir / name: config for name, config in phases.items()}, _said)


def _said(change: str, recorded: dict, config: TrainConfig) -> str:
    """A setting a checkpoint was made with (`recorded`) that `config` changes, in words: its
    data recipe without the data's version is one written before the version was recorded, not
    one of another recipe (its features may have been of an older version, which cannot be told)."""
    if change != "data":
        return change
    try:
        recorded = json.loads(recorded.get("data"))
        same_otherwise = ("data_version" not in recorded
                          and {**recorded, "data_version": DATA_VERSION} == json.loads(config.data))
    except (TypeError, ValueError):
        return change
    return ("data (it does not record the training data's version, so whether it learned from this version's "
            "features cannot be told)" if same_otherwise else change)


def train_embedded(work_dir: Path, out_path: Path, recipe: EmbeddedRecipe, device: torch.device,
                   replace: bool = True) -> dict:
    from stepfoley.engine.controlnet import AudioControlNet
    from stepfoley.engine.embedded.model import build_embedded_model, save_embedded_weights

    rank, world = distributed_context()
    phases = phase_configs(recipe)
    check_checkpoints(work_dir, phases)
    log = _log_to(work_dir / "train.log" if rank == 0 else None)
    work_dir.mkdir(parents=True, exist_ok=True)
    figures: dict = {"recipe": asdict(recipe), "threads": torch.get_num_threads(), "processes": world}
    # the networks' first weights are drawn from the data seed too (they came from an unseeded
    # generator, so one recipe trained twice differed in every network)
    torch.manual_seed(recipe.data.seed)
    model = build_embedded_model(random_weights=True, device=device)  # encoders and codec; net re-initialized
    net = model.net
    net.initialize_weights()
    net.requires_grad_(True).train()
    net.empty_string_feat.requires_grad_(False)  # the text encoder's encoding of ""

    t0 = time.perf_counter()
    data, built_in = _training_data(model, recipe, work_dir, rank, world, log)
    # a resumed run read the data an earlier one made: that one's time is the run's
    figures["data_seconds"] = built_in if built_in is not None else time.perf_counter() - t0
    log(f"data: {len(data.latent)} examples over {len(data.clip)} windows, {len(data.texts)} captions, "
        f"{len(data.controlnet_pairs())} ControlNet pairs, in {figures['data_seconds']:.0f} s")

    mean, std = data.latent_stats()
    with torch.no_grad():
        net.latent_mean.copy_(mean)
        net.latent_std.copy_(std)
    net.latent_mean.requires_grad_(False)
    net.latent_std.requires_grad_(False)

    # Phase 1: the base network.
    loss = LossModule({"net": net}, lambda parts, batch, g: base_flow_loss(parts["net"], batch, 0.1, g))
    batches = base_batches(data, net.normalize, recipe.batch_size, recipe.data.seed, rank, world)
    result = train(loss, net, batches, phases["base"], device, work_dir / "base", log)
    load_trained(net, result.params)
    figures["base"] = _phase_figures(result)

    # Phase 2: the NAG ControlNet, base frozen, starting as a copy of the blocks it feeds.
    net.requires_grad_(False).eval()
    torch.manual_seed(recipe.data.seed + 1)
    controlnet = AudioControlNet.from_base(net, depth=recipe.controlnet_depth).to(device)
    loss = LossModule({"net": net, "controlnet": controlnet},
                      lambda parts, batch, g: controlnet_flow_loss(parts["net"], parts["controlnet"], batch, 0.1, g))
    batches = controlnet_batches(data, net.normalize, recipe.batch_size, recipe.data.seed, rank, world)
    result = train(loss, controlnet, batches, phases["controlnet"], device, work_dir / "controlnet", log)
    load_trained(controlnet, result.params)
    figures["controlnet"] = _phase_figures(result)
    figures["controlnet"]["held_out_loss"] = {
        k: round(v, 4) for k, v in held_out_controlnet_losses(net, controlnet.eval(), data).items()}
    log("ControlNet held-out loss: " + ", ".join(
        f"{k.replace('_', ' ')} {v:.4f}" for k, v in figures["controlnet"]["held_out_loss"].items()))

    # Phase 3: the loudness ControlNet, base frozen.
    loudness, figures["loudness"] = _train_loudness(net, data, recipe, device, work_dir, rank, world, log)

    # the data and each phase, over every run this one resumed (this run's own clock counts only
    # what was left: a resumed total came out shorter than one of its phases)
    figures["total_seconds"] = figures["data_seconds"] + sum(figures[p]["seconds"]
                                                             for p in ("base", "controlnet", "loudness"))
    log(f"time: data {figures['data_seconds']:.0f} s, base {figures['base']['seconds']:.0f} s, "
        f"ControlNet {figures['controlnet']['seconds']:.0f} s, loudness {figures['loudness']['seconds']:.0f} s, "
        f"total {figures['total_seconds']:.0f} s ({figures['processes']} process(es) x {figures['threads']} thread(s))")
    # rank 0 alone writes them: the others ended as if it had (torchrun said only that rank 0 failed)
    with every_rank_ends_as_rank_zero(rank, world):
        if rank == 0:
            record = {"training_command": _command("embedded"), "data_seed": str(recipe.data.seed),
                      "recipe": json.dumps(asdict(recipe)), "figures": json.dumps(figures)}
            save_embedded_weights(out_path, net, controlnet, model.codec, loudness=loudness, replace=replace,
                                  metadata=record)
            log(f"wrote {out_path}")
    return figures


def extend_with_loudness(weights_path: Path, work_dir: Path, out_path: Path, recipe: EmbeddedRecipe,
                         device: torch.device, replace: bool = True) -> dict:
    """Phase 3 alone on weights trained before it existed (an extension of that training, not a
    second model): the data of the same recipe (rebuilt with each example's loudness), the loudness
    ControlNet trained with the weights' base frozen, and the weights written again with it, their
    base, NAG ControlNet and metadata unchanged but for the loudness recipe, figures and command."""
    from stepfoley.engine.embedded.model import _read_weights, build_embedded_model, save_embedded_weights

    rank, world = distributed_context()
    check_checkpoints(work_dir, {"loudness": phase_configs(recipe)["loudness"]})
    log = _log_to(work_dir / "train.log" if rank == 0 else None)
    work_dir.mkdir(parents=True, exist_ok=True)
    _, meta = _read_weights(weights_path)
    shipped = _recorded_recipe(meta)
    data_recipe = json.loads(json.dumps(asdict(recipe.data)))  # as stored: tuples are lists
    if _split_shaping(shipped["data"])[0] != _split_shaping(data_recipe)[0]:
        log("note: the weights were trained on another data recipe than the one the loudness ControlNet learns from")
    model = build_embedded_model(weights_path=weights_path, device=device)
    net = model.net
    t0 = time.perf_counter()
    data, built_in = _training_data(model, recipe, work_dir, rank, world, log)
    figures = {"data_seconds": built_in if built_in is not None else time.perf_counter() - t0,
               "threads": torch.get_num_threads(), "processes": world}
    loudness, figures["loudness"] = _train_loudness(net, data, recipe, device, work_dir, rank, world, log)
    figures["total_seconds"] = figures["data_seconds"] + figures["loudness"]["seconds"]  # as train_embedded's
    log(f"time: data {figures['data_seconds']:.0f} s, loudness {figures['loudness']['seconds']:.0f} s, "
        f"total {figures['total_seconds']:.0f} s ({world} process(es) x {figures['threads']} thread(s))")
    with every_rank_ends_as_rank_zero(rank, world):  # rank 0 alone writes them, as train_embedded
        if rank == 0:
            trained = json.loads(meta.get("figures", "{}"))
            trained["loudness"] = {**figures["loudness"], "data_seconds": round(figures["data_seconds"], 1),
                                   "total_seconds": round(figures["total_seconds"], 1)}
            shipped.update({k: v for k, v in asdict(recipe).items() if k.startswith("loudness_")})
            shipped["data"] = {**_split_shaping(shipped["data"])[0], **_split_shaping(data_recipe)[1]}
            record = {**{k: v for k, v in meta.items()
                         if k not in ("net_config", "controlnet_config", "loudness_config")},
                      "recipe": json.dumps(shipped), "figures": json.dumps(trained),
                      "loudness_training_command": _command("loudness")}
            save_embedded_weights(out_path, net, model.controlnet, model.codec, loudness=loudness, metadata=record,
                                  replace=replace)
            log(f"wrote {out_path}")
    return figures


def _recorded_recipe(meta: dict[str, str]) -> dict:
    """The training recipe a weights file records, as a JSON object whose "data" is an object;
    empty ones where it records none or something else (made elsewhere, or damaged)."""
    try:
        recipe = json.loads(meta.get("recipe", "{}"))
    except (ValueError, RecursionError):
        recipe = {}
    recipe = recipe if isinstance(recipe, dict) else {}
    if not isinstance(recipe.get("data"), dict):
        recipe["data"] = {}
    return recipe


def recorded_data_recipe(weights_path: Path) -> DataRecipe | None:
    """The data recipe the weights' base was trained on, as their record holds it, with this
    version's shaping of phase 3's targets (that phase's own); None where the record holds no
    complete one that could be trained from (weights of an older version, made elsewhere, or
    damaged). Why: the loudness ControlNet learns beside that base, from the same mixtures
    (`train embedded --background-db`, say)."""
    from stepfoley.engine.embedded.model import _read_weights

    stored = _split_shaping(_recorded_recipe(_read_weights(weights_path)[1])["data"])[0]
    wanted = _split_shaping(asdict(DataRecipe()))[0]
    if set(stored) != set(wanted):
        return None
    try:
        recipe = DataRecipe(**{name: _as_typed_like(wanted[name], value) for name, value in stored.items()})
    except (TypeError, OverflowError):
        return None
    return recipe if _trainable(recipe) else None


def _as_typed_like(default, value):
    """A value read from JSON as the type of the recipe's default (a tuple of numbers, a finite
    float, an int); TypeError when it is not one."""
    if isinstance(default, tuple):
        if not isinstance(value, list) or len(value) != len(default):
            raise TypeError(value)
        return tuple(_as_typed_like(d, v) for d, v in zip(default, value))
    if isinstance(value, bool) or not isinstance(value, (int, float)) or (
            isinstance(default, int) and not isinstance(value, int)):
        raise TypeError(value)
    value = type(default)(value)
    if not math.isfinite(value):
        raise TypeError(value)
    return value


def _trainable(data: DataRecipe) -> bool:
    """Whether a recorded data recipe holds what `train embedded` itself would accept: enough
    scenes, some held out, seeds inside the training range (never the evaluation's unseen
    scenes), ranges in order, probabilities."""
    ranges = (data.dominance_db, data.target_lufs)
    return (2 <= data.held_out_scenes < data.scenes and data.seed >= 0
            and first_training_seed(data.seed) + data.scenes <= TRAINING_SEED_RANGE[1]
            and data.windows_per_scene >= 2 and data.scene_seconds >= 2 * WINDOW_S
            and all(low <= high for low, high in ranges)
            and 0 <= data.dominance_db[0] and data.dominance_db[1] <= DOMINANCE_DB_MOST
            and all(0 <= p <= 1 for p in (data.fused_prob, data.stem_alone_prob, data.generic_caption_prob)))


def _split_shaping(data_recipe: dict) -> tuple[dict, dict]:
    """A stored data recipe as (what every phase learns from, how phase 3 shapes its targets)."""
    shaping = {k: v for k, v in data_recipe.items() if k.startswith("shaped_")}
    return {k: v for k, v in data_recipe.items() if k not in shaping}, shaping


def _remove_features(path: Path) -> None:
    try:
        path.unlink()
    except OSError as error:
        raise InvalidInputError(f"{path}, which the training data is rebuilt into, cannot be removed "
                                f"({error.strerror or error}); remove it, or choose another --work folder.") from None


def _training_data(model, recipe: EmbeddedRecipe, work_dir: Path, rank: int, world: int,
                   log) -> tuple[EmbeddedData, float | None]:
    """The recipe's features, read from work_dir/features.safetensors or rendered there first
    (again when the file is from an older recipe), and the seconds their rendering took (None
    for a file that does not record it)."""
    features_path = work_dir / "features.safetensors"
    def current() -> bool:
        try:
            EmbeddedData.check_current(features_path, model.codec.config, recipe.data)
            return True
        except (StaleFeaturesError, SafetensorError, OSError, ValueError):
            return False

    # rank 0's checks of the file and its making end every rank as they end rank 0: a rank waiting on
    # the file system never learned why rank 0 stopped
    with every_rank_ends_as_rank_zero(rank, world, ready=current):
        if rank == 0:
            sweep_stale_parts(work_dir)  # the features' temporary copy a killed run left
            if "features_version" in features_metadata(features_path):  # deleted as stale, it took hours
                raise InvalidInputError(f"{features_path} holds the features of `stepfoley train controlnet`; they "
                                        "are left as they are. Choose another --work folder for the embedded model.")
            if features_path.exists():
                try:
                    EmbeddedData.check_current(features_path, model.codec.config, recipe.data)
                except StaleFeaturesError as stale:
                    log(f"{stale} Rebuilding it.")
                    _remove_features(features_path)
                except (SafetensorError, OSError, ValueError) as error:  # cut short, damaged, a folder
                    log(f"{features_path} cannot be read ({error}). Rebuilding it.")
                    _remove_features(features_path)
            if not features_path.exists():
                t0 = time.perf_counter()
                data = build_embedded_data(model, recipe.data, first_training_seed(recipe.data.seed),
                                           workers=recipe.data_workers, log=log)
                data.save(features_path, {"recipe": json.dumps(asdict(recipe.data)),
                                          "codec_config": json.dumps(asdict(model.codec.config)),
                                          "build_seconds": f"{time.perf_counter() - t0:.3f}"})
    with safe_open(str(features_path), "pt") as f:
        built_in = (f.metadata() or {}).get("build_seconds")
    return EmbeddedData.load(features_path, model.codec.config), float(built_in) if built_in else None


def _train_loudness(net, data: EmbeddedData, recipe: EmbeddedRecipe, device, work_dir: Path, rank: int,
                    world: int, log):
    """The loudness ControlNet on the base's examples as shaped for it (miniworld_data), each
    with its loudness per latent frame, the base frozen; returns it (EMA weights) and its
    figures with held-out losses."""
    from stepfoley.engine.controlnet import AudioControlNet

    net.requires_grad_(False).eval()
    torch.manual_seed(recipe.data.seed + 2)
    loudness = AudioControlNet.from_base(net, depth=recipe.loudness_depth, condition_dim=1).to(device)
    # (a resume checks the frozen base it learns beside: trainer._resumable)
    cfg = phase_configs(recipe)["loudness"]
    loss = LossModule({"net": net, "loudness": loudness},
                      lambda parts, batch, g: loudness_flow_loss(parts["net"], parts["loudness"], batch, 0.1, g))
    batches = base_batches(data, net.normalize, recipe.batch_size, recipe.data.seed + 2, rank, world, shaped=True)
    result = train(loss, loudness, batches, cfg, device, work_dir / "loudness", log)
    load_trained(loudness, result.params)
    figures = _phase_figures(result)
    figures["held_out_loss"] = {k: round(v, 4) for k, v in held_out_loudness_losses(net, loudness.eval(), data).items()}
    log("loudness ControlNet held-out loss: " + ", ".join(
        f"{k.replace('_', ' ')} {v:.4f}" for k, v in figures["held_out_loss"].items()))
    return loudness, figures


def _command(what: str) -> str:
    return f"stepfoley train {what} " + " ".join(shlex.quote(a) for a in sys.argv[3:])


def _phase_figures(result) -> dict:
    tail = result.losses[-100:]
    return {"seconds": round(result.seconds, 1), "steps": result.steps,
            "samples_per_second": round(result.samples_per_second, 1),
            "final_loss": round(sum(tail) / max(len(tail), 1), 4)}
