"""Files of the evaluation's small networks (the audio embedding, the source-presence
classifier): tensors plus a JSON training report under the safetensors metadata key
checkpoints.REPORT_KEY (read by engine.checkpoints.load_with_report); the shipped file if
there is one, else one trained once into the user's cache. Also the training loop both share
(their convolutional trunk is the engine's, engine.audio_embedding.conv_trunk)."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Callable, TypeVar

import torch
from torch import nn

from stepfoley.atomic import write_atomically
from stepfoley.engine import checkpoints
from stepfoley.engine.errors import CheckpointError
from stepfoley.lab.miniworld import SOURCE_KINDS

Module = TypeVar("Module", bound=nn.Module)

# The seeds of a network's training clips: from its clip base (embedding and presence have their
# own, far apart), a block per network seed and, within it, one per source kind.
CLIP_SEEDS_PER_NETWORK_SEED = 100_000
CLIP_SEEDS_PER_KIND = 1000


def first_clip_seed(clip_seed_base: int, network_seed: int, kind_index: int, first: int) -> int:
    """The seed of clip number `first` of kind `kind_index` for a network trained from `network_seed`."""
    return clip_seed_base + network_seed * CLIP_SEEDS_PER_NETWORK_SEED + kind_index * CLIP_SEEDS_PER_KIND + first


def fit(model: nn.Module, batch_loss: Callable[[], torch.Tensor], steps: int, learning_rate: float,
        minutes: float, on_progress: Callable[[int, int], None] | None = None) -> tuple[int, float]:
    """Train `model` for `steps` steps of `batch_loss()` with AdamW (weight decay 1e-4) under a
    one-cycle schedule (10 % warm-up); `minutes` only stops a run that is unexpectedly slow.
    Returns (steps done, last loss) and leaves the model in eval mode."""
    deadline = time.monotonic() + 60.0 * float(minutes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, learning_rate, total_steps=steps, pct_start=0.1)
    model.train()
    done, loss = 0, float("nan")
    for done in range(1, steps + 1):
        loss_t = batch_loss()
        optimizer.zero_grad(set_to_none=True)
        loss_t.backward()
        optimizer.step()
        schedule.step()
        loss = float(loss_t.detach())
        if on_progress is not None:
            on_progress(done, steps)
        if time.monotonic() > deadline:
            break
    model.eval()
    return done, loss


def save_with_report(module: nn.Module, path: str | os.PathLike, report: dict) -> Path:
    """Write `module`'s state and `report` atomically (a temporary file, then a rename)."""
    from safetensors.torch import save_file

    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tensors = {k: v.detach().contiguous().clone() for k, v in module.state_dict().items()}
    metadata = {checkpoints.REPORT_KEY: json.dumps(report)}
    return write_atomically(path, lambda temp: save_file(tensors, str(temp), metadata=metadata), replace=True)


def load_with_report(path: str | os.PathLike, file_format: str, what: str, how_to_train: str,
                     build: Callable[[dict], Module]) -> Module:
    """engine.checkpoints.load_with_report, refusing a network trained on other source kinds
    than the mini-world has now (its outputs or captions would not line up)."""
    def build_if_current(report: dict) -> Module:
        kinds = report.get("config", {}).get("kinds", [])
        if set(kinds) != set(SOURCE_KINDS):
            raise CheckpointError(f"{path} was trained on source kinds {list(kinds)}, but the mini-world now "
                                  f"has {sorted(SOURCE_KINDS)}; {how_to_train}.")
        return build(report)

    return checkpoints.load_with_report(path, file_format, what, how_to_train, build_if_current)


def cache_dir() -> Path:
    """$STEPFOLEY_CACHE_DIR, else $XDG_CACHE_HOME/stepfoley, else ~/.cache/stepfoley."""
    if os.environ.get("STEPFOLEY_CACHE_DIR"):
        return Path(os.environ["STEPFOLEY_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "stepfoley"


def shipped_or_cached(shipped: Path, cached_name: str, what: str, minutes: float, load: Callable[[Path], Module],
                      train: Callable[[Path], object], cache: str | os.PathLike | None = None,
                      on_message: Callable[[str], None] | None = None) -> Module:
    """The shipped file if present; else the one trained earlier into the cache; else train it
    there now (`train(path)`, a few CPU minutes, once)."""
    if shipped.is_file():
        return load(shipped)
    path = (Path(cache) if cache is not None else cache_dir()) / cached_name
    if not path.is_file():
        if on_message is not None:
            on_message(f"no shipped {what} at {shipped}; training one into {path} "
                       f"(about {minutes:.0f} CPU minutes, once)")
        train(path)
    return load(path)
