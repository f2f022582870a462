"""Files of the evaluation's small networks (the audio embedding, the source-presence
classifier): tensors plus a JSON training report under the safetensors metadata key
"stepfoley"; the shipped file if there is one, else one trained once into the user's cache.
Also what both networks share: the convolutional trunk and the training loop."""

from __future__ import annotations

import json
import os
import time
from dataclasses import fields
from pathlib import Path
from typing import Callable, TypeVar

import torch
from torch import nn

from stepfoley.atomic import write_atomically
from stepfoley.engine.errors import CheckpointError
from stepfoley.engine.miniworld import SOURCE_KINDS

Config = TypeVar("Config")
Module = TypeVar("Module", bound=nn.Module)


def conv_trunk(channels: tuple) -> nn.Sequential:
    """(B, 1, M, T) log-mel -> (B, channels[-1], M', T'): 3x3 conv, batch norm, ReLU, 2x2 max pool
    per entry of `channels`."""
    blocks, width = [], 1
    for out in channels:
        blocks += [nn.Conv2d(width, out, 3, padding=1), nn.BatchNorm2d(out), nn.ReLU(), nn.MaxPool2d(2)]
        width = out
    return nn.Sequential(*blocks)


def pool_time_frequency(h: torch.Tensor) -> torch.Tensor:
    # h: (B, C, M', T') -> (B, 2C): mean and max over time and frequency, so any length works
    return torch.cat([h.mean(dim=(2, 3)), h.amax(dim=(2, 3))], dim=1)


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
    return write_atomically(path, lambda temp: save_file(tensors, str(temp), metadata={"stepfoley": json.dumps(report)}),
                            replace=True)


def read_report(path: str | os.PathLike) -> dict:
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get("stepfoley", "{}"))


def config_from_report(config_type: type[Config], report: dict) -> Config:
    """The frozen config recorded in a report (JSON lists back to tuples)."""
    known = {f.name for f in fields(config_type)}
    return config_type(**{k: tuple(v) if isinstance(v, list) else v
                          for k, v in report["config"].items() if k in known})


def load_with_report(path: str | os.PathLike, file_format: str, what: str, how_to_train: str,
                     build: Callable[[dict], Module]) -> Module:
    """The network saved at `path`, in eval mode on the CPU, with `.report` and `.path` set.
    `build(report)` makes the empty network from the recorded config. Every problem is a
    CheckpointError that says what to do."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"The {what} {path} does not exist; {how_to_train}.")
    try:
        report = read_report(path)
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"The {what} {path} cannot be read ({e}); delete it and train again.")
    if report.get("format") != file_format:
        raise CheckpointError(f"{path} is not a StepFoley {what} (format {report.get('format')!r}, "
                              f"expected {file_format!r}); delete it and train again.")
    kinds = report.get("config", {}).get("kinds", [])
    if set(kinds) != set(SOURCE_KINDS):
        raise CheckpointError(f"{path} was trained on source kinds {list(kinds)}, but the mini-world now "
                              f"has {sorted(SOURCE_KINDS)}; delete it and train again.")
    module = build(report)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not match the {what}'s layout ({e}); delete it and train again.")
    module.report, module.path = report, path
    return module.eval().requires_grad_(False)


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
