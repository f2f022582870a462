"""The training loop shared by both phases (base network, NAG ControlNet).

AdamW (lr 1e-4, betas 0.9/0.95, weight decay 1e-6, eps 1e-6 under bf16), linear warm-up then
x0.1 at 80% and 90% of the steps, bf16 autocast on CUDA, power-function EMAs snapshotted for
post-hoc EMA (sigma_rel 0.05), each snapshot written once to a file of its own, checkpoints with
resume, and DistributedDataParallel when launched by torchrun (NCCL on GPUs, gloo on CPUs).
"""

from __future__ import annotations

import errno
import hashlib
import itertools
import json
import math
import os
import pickle
import re
import stat
import struct
import time
from contextlib import contextmanager, nullcontext
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator

import torch
import torch.distributed as dist

try:
    import fcntl
except ImportError:  # Windows
    fcntl = None

from stepfoley.atomic import sweep_stale_parts, write_atomically
from stepfoley.engine.devices import autocast_context, resolve_precision
from stepfoley.engine.errors import (CheckpointError, InvalidInputError, OutputError, StepFoleyError,
                                     is_out_of_memory)
from stepfoley.lab.training.ema import PowerEMA, posthoc_average, posthoc_ema
from stepfoley.lab.training.schedule import lr_multiplier


@dataclass(frozen=True)
class TrainConfig:
    steps: int
    batch_size: int = 16
    lr: float = 1e-4
    betas: tuple[float, float] = (0.9, 0.95)
    weight_decay: float = 1e-6
    warmup_steps: int = 1000
    drop_prob: float = 0.1
    ema_sigma_rels: tuple[float, ...] = (0.05, 0.10)
    final_sigma_rel: float = 0.05
    snapshot_every: int = 0  # 0: steps // 16
    checkpoint_every: int = 0  # 0: none (a run stopped part way starts over); else also at the last step
    log_every: int = 50
    seed: int = 0
    precision: str = "auto"
    data: str = ""  # what the run learns from (a recipe, a dataset list, the frozen base): a resume must match


@dataclass
class TrainResult:
    params: dict[str, torch.Tensor]  # post-hoc EMA of the trained tensors
    losses: list[float] = field(default_factory=list)
    seconds: float = 0.0
    samples_per_second: float = 0.0
    steps: int = 0


def process_device(device: torch.device) -> torch.device:
    """The device this process trains on: under torchrun a plain 'cuda' means this process's own
    GPU (LOCAL_RANK), so that every rank does not land on cuda:0."""
    if device.type == "cuda" and device.index is None and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
        torch.cuda.set_device(device)
    return device


def _resumable(config: TrainConfig, loss_module: torch.nn.Module, trainable: torch.nn.Module) -> dict:
    """What a checkpoint must have been made with to be resumed by this run: the settings, the
    trained network's layout (another ControlNet depth), and the values of the frozen parts it
    learns beside (another base: its ControlNet would be the old base's)."""
    own = {id(t) for t in (*trainable.parameters(), *trainable.buffers())}
    frozen = hashlib.sha256()
    for name, tensor in (*loss_module.named_parameters(), *loss_module.named_buffers()):
        if id(tensor) not in own:
            frozen.update(name.encode())
            frozen.update(tensor.detach().float().cpu().numpy().tobytes())
    layout = sorted((name, tuple(t.shape)) for name, t in trainable.state_dict().items())
    return {**_settings(config),
            "network layout": hashlib.sha256(repr(layout).encode()).hexdigest()[:16],
            "frozen base": frozen.hexdigest()[:16]}


def _settings(config: TrainConfig) -> dict:
    return {k: v for k, v in asdict(config).items() if k not in ("checkpoint_every", "log_every")}


# what every checkpoint `train` writes holds
_CHECKPOINT_KEYS = ("step", "trainable", "optimizer", "scheduler", "ema", "snapshots", "generator")


class _Unreadable(Exception):
    """A file `train` wrote that cannot be read back; its words say why."""


def _load_saved(path: Path, mmap: bool = False) -> object:
    """What `train` saved in `path`, read onto the CPU; _Unreadable where it cannot be: a file cut
    short or damaged (torch raises several kinds), or a folder, a pipe or a device (a pipe held
    the run waiting for ever)."""
    from stepfoley.engine.checkpoints import torch_load_reason

    try:
        if not stat.S_ISREG(os.stat(path).st_mode):
            raise _Unreadable("it is not a file: a folder, a pipe or a device")
        # tensors, numbers and lists only: a file in a work folder is never code to run
        return torch.load(path, map_location="cpu", weights_only=True, mmap=mmap)
    except (pickle.UnpicklingError, RuntimeError, EOFError, OSError, ValueError, KeyError, IndexError, TypeError,
            struct.error) as e:
        # a text file read as an old-style checkpoint says only "KeyError: 101"; torch's own
        # refusal advises loading it unsafely
        raise _Unreadable(e if isinstance(e, (RuntimeError, OSError, ValueError)) else torch_load_reason(e)) from None


def read_checkpoint(last: Path, needed: tuple[str, ...] = _CHECKPOINT_KEYS) -> dict:
    """A run's last.pt; CheckpointError where it cannot be resumed from: one _load_saved cannot
    read, or a file that is no checkpoint of `train` (each was a traceback): not a dictionary,
    or one without the `needed` entries."""
    try:
        state = _load_saved(last)
    except _Unreadable as e:
        raise CheckpointError(f"{last} cannot be resumed from ({e}). Delete it to start this training "
                              "over, or choose another --work folder.") from None
    missing = ["anything"] if not isinstance(state, dict) else [k for k in needed if k not in state]
    if missing:
        raise CheckpointError(f"{last} cannot be resumed from: it is no training checkpoint of StepFoley (it has no "
                              f"{', '.join(missing)}). Delete it to start this training over, or choose another "
                              "--work folder.")
    return state


def recorded_settings(checkpoint_dir: Path) -> dict:
    """The settings a checkpoint in `checkpoint_dir` was made with, {} without one (or without
    a record of them)."""
    last = checkpoint_dir / "last.pt"
    if not last.exists():
        return {}
    return read_checkpoint(last, needed=()).get("config") or {}


def settings_changed(recorded: dict, config: TrainConfig) -> list[str]:
    """The settings (data, seed, steps, rates ...) of `recorded` (recorded_settings) that
    `config` changes; what train() refuses to resume, found before the run's earlier phases
    (its frozen base's values are known only once that base is trained)."""
    wanted = _settings(config)
    return sorted(k for k in wanted if k in recorded and recorded[k] != wanted[k])


def check_checkpoints(checkpoints: dict[Path, TrainConfig], said: Callable[[str, dict, TrainConfig], str]) -> None:
    """The checkpoint in each folder of `checkpoints` against the settings its run trains with,
    before any work (making the data, training the phases before it: hours, and then refused);
    CheckpointError naming every one of other settings and what changed, each change in the
    recipe's words: `said(setting, recorded settings, config)`."""
    stale = []
    for folder, config in checkpoints.items():
        recorded = recorded_settings(folder)
        if changed := settings_changed(recorded, config):
            stale.append(f"{folder / 'last.pt'} is a run with other settings: "
                         + "; ".join(said(setting, recorded, config) for setting in changed) + ".")
    if stale:
        advice = ("Resuming it would mix the two: delete it" if len(stale) == 1 else
                  "Resuming them would mix the two: delete them (or the whole work folder)")
        raise CheckpointError(" ".join(stale) + f" {advice} to start this training over, or choose another "
                              "--work folder.")


class ResumableBatches:
    """Endless batches, each `make(generator)`, whose place in the sequence is the generator's
    state: `train` resumes them by setting it, instead of making every earlier batch again (at
    step 198,000 of an MMAudio ControlNet's run, about two hours of this machine)."""

    def __init__(self, make, generator: torch.Generator):
        self.make, self.generator = make, generator

    def __iter__(self) -> "ResumableBatches":
        return self

    def __next__(self) -> object:
        return self.make(self.generator)

    def state_dict(self) -> torch.Tensor:
        return self.generator.get_state()

    def load_state_dict(self, state: torch.Tensor) -> None:
        self.generator.set_state(state)


def _generator_states(generator: torch.Generator, world: int) -> list[torch.Tensor]:
    """Every rank's generator state (each rank draws its own noise); called by every rank."""
    return _every_rank(generator.get_state(), world)


def _every_rank(state, world: int) -> list:
    """Every rank's `state`, in rank order; called by every rank."""
    if world == 1:
        return [state]
    states: list = [None] * world
    dist.all_gather_object(states, state)
    return states


@contextmanager
def training_alone_in(work_dir: Path) -> Iterator[None]:
    """While a training runs in `work_dir`, an exclusive lock on its `.training.lock`: a second
    training started there is refused before any work (two at once replaced each other's
    checkpoints at every save, and one rebuilt the features under the other). The system lets
    go of it when the process ends, killed too. Where there is no flock (Windows), nothing is held."""
    if fcntl is None:
        yield
        return
    path = work_dir / ".training.lock"
    try:
        try:  # for writing: NFS turns flock into a byte-range lock, which an exclusive one needs
            handle = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except PermissionError:  # another user's 0644 lock file in a shared folder: flock needs no more
            handle = os.open(path, os.O_RDONLY)
    except OSError as error:
        raise InvalidInputError(f"The work folder's lock file {path} cannot be made ({error.strerror or error}); "
                                "remove what is there under that name, or choose another --work folder.") from None
    try:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise InvalidInputError(f"Another training is running in the work folder {work_dir}; two at once "
                                    "overwrite each other's checkpoints. Wait for it to end, or choose another "
                                    "--work folder.") from None
        except OSError as error:
            if error.errno not in (errno.ENOSYS, errno.EOPNOTSUPP, errno.ENOLCK, errno.EBADF):
                raise InvalidInputError(f"The work folder's lock file {path} cannot be locked "
                                        f"({error.strerror or error}); choose another --work folder.") from None
            # a file system without locks (NFS without its lock daemon, some cluster mounts; NFS with
            # the file open read-only only): as on Windows
        yield
    finally:
        os.close(handle)


# How often, at most, a rank above 0 looks whether rank 0 has ended what it does alone.
RANK_ZERO_POLL_S = 5.0
# the same while rank 0 writes a checkpoint or an EMA snapshot during the steps (seconds, not
# hours): each look it waits past the write's end is time every rank's training stands still
RANK_ZERO_WRITE_POLL_S = 0.2
# each block every_rank_ends_as_rank_zero guards, numbered in the order every rank enters them
_RANK_ZERO_BLOCKS = itertools.count()


@contextmanager
def every_rank_ends_as_rank_zero(rank: int, world: int, ready: Callable[[], bool] = lambda: True,
                                 poll_s: float = RANK_ZERO_POLL_S) -> Iterator[None]:
    """A block in which rank 0 alone does what every rank depends on (takes the work folder's
    lock; makes the training data, hours for a large list; checks a resumed checkpoint's EMA
    snapshot files), which every rank leaves as rank 0 did: where rank 0 fails, every rank raises
    its error, in its words. The others went on and met rank 0's end in their next collective
    (gloo's "Connection closed by peer"; under NCCL a hang until torchrun stopped them), or were
    stopped by torchrun as they waited, without a word. Every rank enters the same blocks in the
    same order. The ranks above 0 wait for rank 0's outcome on the rendezvous's store, not in a
    collective (which ended the run after NCCL's timeout, 10 minutes, with a traceback on every
    other rank), then on the file system until `ready()`: what rank 0 made, as this rank sees it;
    each looks at most `poll_s` apart. A block costs a few round trips to the store and whatever
    of the last look passes rank 0's end: one per step would slow the training."""
    if world <= 1:
        yield
        return
    store = dist.distributed_c10d._get_default_store()  # the rendezvous's: no collective, no timeout
    # torchrun keeps its rendezvous's store when it restarts the processes (--max-restarts), and
    # each numbers its blocks from 0 again: a restarted rank read the attempt before's outcome
    attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
    key = f"stepfoley/rank-zero/{attempt}/{next(_RANK_ZERO_BLOCKS)}"
    left = f"{key}/left"  # how many ranks above 0 have left the block failing

    def every_rank_has_read() -> None:
        # torchrun stops every process once one ends: each waits for the others to have rank 0's
        # outcome, so that all end together, each saying it (rank 0 ended before a rank asleep
        # between two looks had said anything; a rank above 0 that ended first stopped rank 0
        # before its traceback, and a rank still on its way, without a word)
        _wait_until(lambda: store.add(left, 0) >= world - 1, longest_pause=0.05, at_most_s=3 * RANK_ZERO_POLL_S)

    if rank == 0:
        try:
            yield
        except Exception as error:
            store.set(key, pickle.dumps(_as_shared(error)))
            every_rank_has_read()
            raise
        store.set(key, pickle.dumps(None))
        return
    try:
        yield
    except Exception:
        store.add(left, 1)  # a rank that fails alone says so
        raise
    _wait_until(lambda: store.check([key]), longest_pause=poll_s)
    failed = pickle.loads(store.get(key))
    if failed is not None:
        store.add(left, 1)
        every_rank_has_read()
        kind, words = failed
        raise kind(words)
    _wait_until(ready, longest_pause=poll_s)


def _wait_until(done: Callable[[], bool], longest_pause: float, at_most_s: float = math.inf) -> None:
    """Until `done()`, or `at_most_s` have passed, looking again after pauses that double from
    a twentieth of a second (a check ends in moments, the training data in hours) up to
    `longest_pause`."""
    pause, deadline = min(0.05, longest_pause), time.monotonic() + at_most_s
    while not done() and time.monotonic() < deadline:
        time.sleep(pause)
        pause = min(2 * pause, longest_pause)


def _as_shared(error: Exception) -> tuple[type, str]:
    """What the ranks above 0 raise for rank 0's `error`: the same where it is said in words."""
    if isinstance(error, StepFoleyError):
        return type(error), str(error)
    return RuntimeError, f"the training's rank 0 stopped ({type(error).__name__}: {error}); its output says where"


def distributed_context() -> tuple[int, int]:
    """(rank, world size); initializes the process group when started by torchrun."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world > 1 and not dist.is_initialized():
        dist.init_process_group("nccl" if torch.cuda.is_available() else "gloo")
    if dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


class LossModule(torch.nn.Module):
    """Holds every module the loss touches so DDP sees one forward per step."""

    def __init__(self, modules: dict[str, torch.nn.Module], loss_fn: Callable):
        super().__init__()
        self.parts = torch.nn.ModuleDict(modules)
        self.loss_fn = loss_fn

    def forward(self, batch, generator):
        # batch: the loss function's (Batch: latents (B, N, C) and their conditions) -> a 0-dim loss
        return self.loss_fn(self.parts, batch, generator)


def load_trained(module: torch.nn.Module, params: dict[str, torch.Tensor]) -> None:
    """Copy the trained tensors (TrainResult.params) into the module."""
    with torch.no_grad():
        own = dict(module.named_parameters())
        for name, value in params.items():
            own[name].copy_(value)


def _save_atomic(obj, path: Path) -> None:
    write_atomically(path, lambda temp: torch.save(obj, temp), replace=True)


@contextmanager
def _written(what: str, path: Path, step: int, resumes_at: int | None) -> Iterator[None]:
    """A file of the run (`what`, at `path`) that cannot be written at `step` raised as an
    OutputError saying why and what running the command again does (`resumes_at`: the step of
    the last checkpoint there, None: none). It was an OSError or a RuntimeError of torch's writer
    ("unexpected pos 64 vs 0" for a full disk) with a traceback: under torchrun, rank 0's alone."""
    try:
        yield
    except (OSError, RuntimeError) as error:
        if is_out_of_memory(error):
            raise
        if isinstance(error, OSError):
            why = error.strerror or str(error)
        else:  # torch's own words, less the C++ source line it cites ("[enforce fail at x.cc:672] . ")
            why = "it stopped part way: " + re.sub(r"^\[enforce fail at [^\]]*\]\s*\.?\s*", "", str(error))[:200]
        again = (f"it resumes from step {resumes_at}, its last checkpoint" if resumes_at is not None
                 else "it starts this training over (no checkpoint was written)")
        raise OutputError(f"{what} {path} cannot be written ({why}) at step {step}; nothing of it was kept. Free "
                          f"space on its disk or make its folder writable again, then run the same command again: "
                          f"{again}.") from None


# where a run's post-hoc EMA snapshots lie, in its checkpoint folder, and their names
SNAPSHOT_FOLDER = "ema-snapshots"
# step-<step>-<the run's settings digest>.pt: a run removes only its own leftovers, never the
# snapshots of a checkpoint of other settings kept under another name
_SNAPSHOT_NAME = re.compile(r"step-(\d{8,})-([0-9a-f]{12})\.pt")


def _settings_digest(run: dict) -> str:
    return hashlib.sha256(json.dumps(run, sort_keys=True, default=repr).encode()).hexdigest()[:12]


class _Snapshots:
    """Rank 0's post-hoc EMA snapshots (PowerEMA.snapshot's records). In a run with a checkpoint
    folder, each step's are written once, to a file of their own in its SNAPSHOT_FOLDER that the
    checkpoints name, and read back only at the end: every checkpoint held them all (4.6 GB of
    each of an MMAudio small_16k ControlNet's, rewritten every time), and the run held them in
    memory throughout. In a run without one, they are held in memory."""

    def __init__(self, folder: Path | None, run: dict | None):
        self.folder = folder
        self.run = run  # the settings its checkpoints record (_resumable): a file is this run's only with them
        self.digest = None if run is None else _settings_digest(run)
        self.held: list[dict] = []
        self.files: list[str] = []
        self.profiles: list[tuple[int, float]] = []  # each record's (step, gamma), in order

    def __len__(self) -> int:
        return len(self.profiles)

    def path(self, step: int) -> Path:
        """Where the snapshots of `step` are written (in a run with a checkpoint folder)."""
        return self.folder / f"step-{step:08d}-{self.digest}.pt"

    def add(self, records: list[dict]) -> None:
        self.profiles += [(record["step"], record["gamma"]) for record in records]
        if self.folder is None:
            self.held += records
            return
        path = self.path(records[0]["step"])
        # replaces one a killed run wrote after the checkpoint this one resumed from
        _save_atomic({"config": self.run, "records": records}, path)
        self.files.append(path.name)

    def resume(self, listed: list, last: Path) -> None:
        """The snapshots the checkpoint `last` lists: file names, each read back to check it, or
        (in one an older StepFoley wrote) the records themselves, written out now."""
        if all(isinstance(entry, dict) for entry in listed):
            for _, records in itertools.groupby(listed, key=lambda record: record["step"]):
                self.add(list(records))
            return
        for name in listed:
            records = self._read(name, f"{last} cannot be resumed from: its EMA snapshot", last)
            self.profiles += [(record["step"], record["gamma"]) for record in records]
            self.files.append(name)

    def forget_others(self, log: Callable[[str], None]) -> None:
        """Remove the snapshot files of this run's settings that it does not list: a run started
        over's, or those a killed run wrote after its last checkpoint. Those of other settings
        are left (a checkpoint kept under another name reads them) and said."""
        others, other_bytes = 0, 0
        for entry in os.scandir(self.folder):
            match = _SNAPSHOT_NAME.fullmatch(entry.name)
            if match is None or entry.name in self.files:
                continue
            try:
                if match[2] == self.digest:
                    os.unlink(entry.path)  # never read (no checkpoint lists it); one this run writes again is replaced
                else:
                    others, other_bytes = others + 1, other_bytes + entry.stat().st_size
            except OSError:
                pass
        if others:
            log(f"{self.folder} also holds {others} EMA snapshot file(s) ({other_bytes / 2**20:.0f} MiB) of a "
                "training with other settings: a checkpoint of that training needs them; delete them if none does")

    def average(self, sigma_rel: float, last: Path | None) -> dict[str, torch.Tensor]:
        """The post-hoc EMA of width sigma_rel, reading the files one at a time."""
        if self.folder is None:
            return posthoc_ema(self.held, sigma_rel)
        records = (record for name in self.files
                   for record in self._read(name, "This training's EMA snapshot", last))
        return posthoc_average(self.profiles, records, sigma_rel)

    def _read(self, name: str, whose: str, last: Path | None) -> list[dict]:
        """The records of the file `name`; CheckpointError where it is missing, cannot be read, or
        is not this run's snapshot of its step."""
        step = _SNAPSHOT_NAME.fullmatch(name)  # a name from a checkpoint: never a path elsewhere
        path = self.folder / name
        advice = (f"Delete {last} to start this training over" if last is not None and last.exists()
                  else "Run this training again") + ", or choose another --work folder."
        if step is None:
            raise CheckpointError(f"{whose} {name} is not a name this training gives its snapshots. {advice}")
        if not os.path.lexists(path):
            raise CheckpointError(f"{whose} {path} is missing. {advice}")
        try:
            saved = _load_saved(path, mmap=True)  # checked at a resume without reading every tensor
        except _Unreadable as e:
            raise CheckpointError(f"{whose} {path} cannot be read ({e}). {advice}") from None
        records = saved.get("records") if isinstance(saved, dict) and saved.get("config") == self.run else None
        if not (isinstance(records, list) and records
                and all(isinstance(r, dict) and r.get("step") == int(step[1]) for r in records)):
            raise CheckpointError(f"{whose} {path} is not this run's snapshot of step {int(step[1])} (another "
                                  f"run's, or damaged). {advice}")
        return records


def train(loss_module: LossModule, trainable: torch.nn.Module, batches: Iterator, config: TrainConfig,
          device: torch.device, checkpoint_dir: Path | None = None,
          log: Callable[[str], None] = print) -> TrainResult:
    """Optimize `trainable` (a submodule of loss_module) for config.steps steps.

    `batches` yields lab.training.objectives.Batch objects for this rank. Resumes from
    checkpoint_dir/last.pt when it exists.
    """
    rank, world = distributed_context()
    loss_module.to(device)
    params = [p for p in trainable.parameters() if p.requires_grad]
    # MMAudio's recipe, which the paper follows (its App. D): Adam's ε 1e-6 under bf16 autocast,
    # 1e-8 in fp32 (with 1e-8 in bf16 a parameter whose gradient is 1e-7 took 10x its steps)
    eps = 1e-6 if resolve_precision(device, config.precision) == "bf16" else 1e-8
    optimizer = torch.optim.AdamW(params, lr=config.lr, betas=config.betas, weight_decay=config.weight_decay, eps=eps)
    scheduler = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_multiplier(s, config.steps, config.warmup_steps))
    ema = PowerEMA(trainable, config.ema_sigma_rels)
    generator = torch.Generator().manual_seed(config.seed * 1000 + rank)
    start_step = 0

    last = checkpoint_dir / "last.pt" if checkpoint_dir else None
    identity = _resumable(config, loss_module, trainable) if last is not None else None
    # rank 0's alone (the ranks' averages are equal): each rank held every snapshot, 32 copies of the network
    snapshots = _Snapshots(checkpoint_dir / SNAPSHOT_FOLDER if last is not None and rank == 0 else None, identity)
    if checkpoint_dir is not None:
        checkpoint_dir.mkdir(parents=True, exist_ok=True)
    # what the steps before a resume did, so the figures are the whole run's
    losses: list[float] = []
    seconds_before, samples = 0.0, 0
    # rank 0's checks of its snapshot files (and its sweeps) end every rank as they end rank 0: the
    # others went on, and met rank 0's end in DDP's first collective
    with every_rank_ends_as_rank_zero(rank, world):
        if snapshots.folder is not None:
            snapshots.folder.mkdir(exist_ok=True)
            # a checkpoint's or a snapshot's temporary copy a killed run left (hundreds of MB)
            sweep_stale_parts(checkpoint_dir)
            sweep_stale_parts(snapshots.folder)
        state = read_checkpoint(last) if last is not None and last.exists() else None
        if state is not None:
            recorded, wanted = state.get("config"), identity
            if recorded is not None and recorded != wanted:
                # keys either side: a checkpoint of an older StepFoley lacks some (the frozen base's)
                changed = sorted(k for k in {*recorded, *wanted} if recorded.get(k) != wanted.get(k))
                raise CheckpointError(f"{last} is a run with other settings ({', '.join(changed)}); resuming it "
                                      "would mix the two. Delete it to start this training over, or choose another "
                                      "--work folder.")
            try:  # one without its settings is another network's, or garbled: said, not a traceback
                trainable.load_state_dict(state["trainable"])
                optimizer.load_state_dict(state["optimizer"])
                scheduler.load_state_dict(state["scheduler"])
                ema.load_state_dict(state["ema"])
                if rank == 0:
                    snapshots.resume(state["snapshots"], last)
                states = state["generator"]
                if isinstance(states, list):  # one per rank; a checkpoint of another world size reseeds the rest
                    if rank < len(states):
                        generator.set_state(states[rank])
                else:  # written before every rank's state was kept: rank 0's
                    generator.set_state(states)
                start_step = int(state["step"])
                losses = list(state.get("losses", []))
                seconds_before, samples = float(state.get("seconds", 0.0)), int(state.get("samples", 0))
            except (RuntimeError, TypeError, ValueError, KeyError, IndexError, AttributeError) as e:
                if is_out_of_memory(e):  # the optimizer's state moved onto a full GPU: not the checkpoint's fault
                    raise
                raise CheckpointError(f"{last} cannot be resumed from: what it holds does not fit this training "
                                      f"({type(e).__name__}: {str(e)[:200]}). Delete it to start this training "
                                      "over, or choose another --work folder.") from None
    if state is not None:
        for group in optimizer.param_groups:  # the checkpoint's would stay: a run made before, or on another device
            group["eps"] = eps
        # the data goes on where the interrupted run stopped: set there where the batches can be
        # (ResumableBatches; a checkpoint of another world size has not every rank's place), else
        # made again up to there
        places = state.get("batches")
        del state  # its optimizer and EMA copies (and an older StepFoley's snapshots), held for the whole run
        if isinstance(batches, ResumableBatches) and isinstance(places, list) and len(places) == world:
            batches.load_state_dict(places[rank])
        else:
            for _ in range(start_step):
                next(batches)
        log(f"resumed from {last} at step {start_step}")
    if snapshots.folder is not None:
        snapshots.forget_others(log)
    resumes_at = start_step if start_step else None  # where a run stopped now would resume (None: start over)

    model = loss_module
    if world > 1:
        model = torch.nn.parallel.DistributedDataParallel(
            loss_module, device_ids=[device.index] if device.type == "cuda" else None,
            find_unused_parameters=False)

    snapshot_every = config.snapshot_every or max(1, config.steps // 16)
    t0 = time.perf_counter()
    model.train()
    for step in range(start_step, config.steps):
        batch = next(batches).to(device)
        with autocast_context(device, config.precision):
            loss = model(batch, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        lr = scheduler.get_last_lr()[0]  # this step's: after scheduler.step() it is the next one's
        scheduler.step()
        ema.update(trainable)
        losses.append(float(loss.detach()))
        samples += batch.latent.shape[0] * world
        done = step + 1
        snapshot_now = done % snapshot_every == 0 or done == config.steps
        # and at the end: a later phase killed would otherwise redo the steps after the last one
        checkpoint_now = last is not None and config.checkpoint_every and (done % config.checkpoint_every == 0
                                                                           or done == config.steps)
        if rank == 0 and (done % config.log_every == 0 or done == config.steps):
            recent = losses[-config.log_every:]
            rate = samples / max(seconds_before + time.perf_counter() - t0, 1e-9)
            log(f"step {done}/{config.steps}  loss {sum(recent) / len(recent):.4f}  "
                f"lr {lr:.2e}  {rate:.1f} samples/s")
        if checkpoint_now:
            states = _generator_states(generator, world)  # every rank takes part
            places = _every_rank(batches.state_dict(), world) if isinstance(batches, ResumableBatches) else None
        # rank 0 alone writes files at this step: a write it cannot make (a full disk, its folder
        # gone) ends every rank with its words, where the others died in their next collective
        # ("Connection closed by peer"; under NCCL, hung). Only at those steps: a block costs every
        # rank a few round trips to the store
        writes = checkpoint_now or (snapshot_now and last is not None)
        with every_rank_ends_as_rank_zero(rank, world, poll_s=RANK_ZERO_WRITE_POLL_S) if writes else nullcontext():
            if rank == 0 and snapshot_now:
                with (_written("The EMA snapshot", snapshots.path(ema.step), done, resumes_at)
                      if snapshots.folder is not None else nullcontext()):  # else held in memory
                    snapshots.add(ema.snapshot())  # held no longer: a copy of the network per sigma_rel
            if rank == 0 and checkpoint_now:
                with _written("The training checkpoint", last, done, resumes_at):
                    _save_atomic({"step": done, "trainable": {k: v for k, v in trainable.state_dict().items()},
                                  "optimizer": optimizer.state_dict(), "scheduler": scheduler.state_dict(),
                                  "ema": ema.state_dict(), "snapshots": list(snapshots.files), "generator": states,
                                  "batches": places, "config": identity, "losses": losses, "samples": samples,
                                  "seconds": seconds_before + time.perf_counter() - t0}, last)
        if checkpoint_now:
            resumes_at = done
    seconds = seconds_before + time.perf_counter() - t0
    # the ranks above 0 hold no snapshots: their own weights, replaced by rank 0's average below (a
    # snapshot file lost since it was written is said on every rank)
    with every_rank_ends_as_rank_zero(rank, world):
        final = snapshots.average(config.final_sigma_rel, last) if rank == 0 and len(snapshots) else {
            n: p.detach().clone() for n, p in trainable.named_parameters() if p.requires_grad}
    if world > 1:  # rank 0's average, on every rank: the next phase trains on it everywhere
        for name in sorted(final):
            final[name] = final[name].to(device).contiguous()
            dist.broadcast(final[name], src=0)
        dist.barrier()
    return TrainResult(params=final, losses=losses, seconds=seconds,
                       samples_per_second=samples / max(seconds, 1e-9), steps=config.steps)
