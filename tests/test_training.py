"""Training: schedule, post-hoc EMA, objectives, and the real trainer at tiny scale (one process
and a 2-process DistributedDataParallel run on the CPU with gloo)."""

import json
import os
import re
import socket
import subprocess
import sys

import pytest
import torch

from stepfoley.lab.training.ema import PowerEMA, posthoc_ema, posthoc_weights, power_ema_beta, sigma_rel_to_gamma
from stepfoley.lab.training.objectives import interpolate
from stepfoley.lab.training.schedule import lr_multiplier


def test_schedule_warmup_then_two_drops():
    assert lr_multiplier(0, 1000, 100) == pytest.approx(0.01)
    assert lr_multiplier(99, 1000, 100) == pytest.approx(1.0)
    assert lr_multiplier(799, 1000, 100) == 1.0
    assert lr_multiplier(800, 1000, 100) == pytest.approx(0.1)
    assert lr_multiplier(900, 1000, 100) == pytest.approx(0.01)


def test_sigma_rel_gamma_pairs_of_the_edm2_paper():
    # sigma_rel^2 = (g+1) / ((g+2)^2 (g+3)), checked both ways
    for sigma in (0.05, 0.10):
        g = sigma_rel_to_gamma(sigma)
        assert ((g + 1) / ((g + 2) ** 2 * (g + 3))) ** 0.5 == pytest.approx(sigma, rel=1e-9)
    assert sigma_rel_to_gamma(0.05) == pytest.approx(16.97, abs=0.01)
    assert sigma_rel_to_gamma(0.10) == pytest.approx(6.94, abs=0.01)
    assert power_ema_beta(1, 6.94) == 0.0  # the first update copies the weights


def test_posthoc_reconstructs_a_tracked_profile_and_interpolates():
    torch.manual_seed(0)
    module = torch.nn.Linear(4, 1)
    ema = PowerEMA(module, (0.05, 0.10))
    snapshots = []
    for k in range(1, 301):
        with torch.no_grad():
            module.weight.copy_(torch.randn(1, 4) + k / 50)
        ema.update(module)
        if k % 30 == 0:
            snapshots += ema.snapshot()
    # the 0.05 profile at the last step is one of the snapshots: reconstructed exactly
    torch.testing.assert_close(posthoc_ema(snapshots, 0.05)["weight"], ema.averages[0]["weight"],
                               atol=1e-4, rtol=1e-4)
    # a width between the tracked ones lands between their averages (weights drift upwards)
    mid = posthoc_ema(snapshots, 0.075)["weight"]
    assert torch.all(mid <= ema.averages[0]["weight"] + 1e-4)
    assert torch.all(mid >= ema.averages[1]["weight"] - 1e-4)
    w = posthoc_weights([(s["step"], s["gamma"]) for s in snapshots], 0.05)
    assert w.sum() == pytest.approx(1.0, abs=1e-3)


def test_interpolation_endpoints():
    x0, x1 = torch.zeros(2, 3, 4), torch.ones(2, 3, 4)
    torch.testing.assert_close(interpolate(x0, x1, torch.tensor([0.0, 1.0]))[:, 0, 0], torch.tensor([0.0, 1.0]))


class ToyBatch:
    """What train() reads of lab.training.objectives.Batch."""

    def __init__(self, latent, target):
        self.latent, self.target = latent, target

    def to(self, device):
        return self


def toy_batches(seed: int, crash_after: int | None = None):
    """Like the recipes' iterators: a new one starts again from its seed. `crash_after`: the
    process is killed while fetching that many + 1st batch."""
    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(3, 2, generator=g)
    fetched = 0
    while True:
        if crash_after is not None and fetched == crash_after:
            raise RuntimeError("killed")
        x = torch.randn(4, 3, generator=g)
        fetched += 1
        yield ToyBatch(x, x @ weight)


def resumable_toy_batches(seed: int, crash_after: int | None = None, made: list | None = None):
    """toy_batches as lab.training.features.controlnet_batches makes its batches: resumable by
    their generator's state. `made` counts the batches made."""
    from stepfoley.lab.training.trainer import ResumableBatches

    g = torch.Generator().manual_seed(seed)
    weight = torch.randn(3, 2, generator=g)

    def make(generator):
        if crash_after is not None and len(made) == crash_after:
            raise RuntimeError("killed")
        made.append(1)
        x = torch.randn(4, 3, generator=generator)
        return ToyBatch(x, x @ weight)

    made = [] if made is None else made
    return ResumableBatches(make, g)


def toy_training(work, init_seed: int, crash_after: int | None = None, lr: float = 3e-2, base_seed: int = 5,
                 hidden: int = 0, steps: int = 12, batches=None, log=lambda line: None, snapshot_every: int = 2,
                 checkpoint_every: int = 6):
    """A linear net (with a hidden layer of `hidden` units, or none) trained beside a frozen
    "base" drawn from `base_seed`, as a ControlNet beside its base."""
    from stepfoley.lab.training.trainer import LossModule, TrainConfig, train

    torch.manual_seed(base_seed)
    base = torch.nn.Linear(3, 3).requires_grad_(False)
    torch.manual_seed(init_seed)
    net = torch.nn.Sequential(torch.nn.Linear(3, hidden), torch.nn.Linear(hidden, 2)) if hidden else torch.nn.Linear(3, 2)
    def loss_fn(parts, b, g):  # noise and dropped rows from the trainer's generator, as the objectives draw them
        kept = (torch.rand(len(b.latent), 1, generator=g) > 0.2).float()
        x = parts["base"](b.latent) + 0.1 * torch.randn(b.latent.shape, generator=g)
        return (kept * (parts["net"](x) - b.target) ** 2).mean()

    loss = LossModule({"net": net, "base": base}, loss_fn)
    config = TrainConfig(steps=steps, batch_size=4, lr=lr, warmup_steps=2, snapshot_every=snapshot_every,
                         checkpoint_every=checkpoint_every, log_every=100)
    batches = toy_batches(0, crash_after) if batches is None else batches
    result = train(loss, net, batches, config, torch.device("cpu"), work, log=log)
    return result, net


@pytest.mark.parametrize("precision, eps", [("bf16", 1e-6), ("fp32", 1e-8)])
def test_adams_epsilon_is_mmaudios_for_the_precision(monkeypatch, precision, eps):
    """MMAudio trains with ε 1e-6 under bf16 autocast, 1e-8 in fp32; it was 1e-8 in both."""
    from stepfoley.lab.training.trainer import LossModule, TrainConfig, train

    made = []

    class Recorded(torch.optim.AdamW):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(torch.optim, "AdamW", Recorded)
    net = torch.nn.Linear(3, 2)
    loss = LossModule({"net": net}, lambda parts, b, g: ((parts["net"](b.latent) - b.target) ** 2).mean())
    config = TrainConfig(steps=1, batch_size=4, warmup_steps=0, snapshot_every=1, log_every=100, precision=precision)
    train(loss, net, toy_batches(0), config, torch.device("cpu"), None, log=lambda line: None)
    assert [o.param_groups[0]["eps"] for o in made] == [eps]


def test_a_resumed_run_takes_adams_epsilon_of_its_own_precision(tmp_path):
    """A checkpoint's optimizer state holds its epsilon: a run saved by an older StepFoley (1e-8
    under bf16), or on a device of the other precision, went on with it."""
    from stepfoley.lab.training.trainer import LossModule, TrainConfig, read_checkpoint, train

    net = torch.nn.Linear(3, 2)
    loss = LossModule({"net": net}, lambda parts, b, g: ((parts["net"](b.latent) - b.target) ** 2).mean())
    config = TrainConfig(steps=4, batch_size=4, warmup_steps=0, snapshot_every=1, checkpoint_every=2,
                         log_every=100, precision="bf16")
    with pytest.raises(RuntimeError, match="killed"):
        train(loss, net, toy_batches(0, crash_after=3), config, torch.device("cpu"), tmp_path, log=lambda line: None)
    state = read_checkpoint(tmp_path / "last.pt")
    state["optimizer"]["param_groups"][0]["eps"] = 1e-8  # as an older StepFoley saved it
    torch.save(state, tmp_path / "last.pt")
    seen = []
    original = torch.optim.AdamW.step

    def step(self, *args, **kwargs):
        seen.append(self.param_groups[0]["eps"])
        return original(self, *args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(torch.optim.AdamW, "step", step)
        train(loss, net, toy_batches(0), config, torch.device("cpu"), tmp_path, log=lambda line: None)
    assert seen == [1e-6, 1e-6]


def test_resumed_training_equals_uninterrupted_training(tmp_path):
    """12 steps straight, against 6 steps, a crash, and a new process that resumes from the
    checkpoint (with weights initialized differently) for the other 6: the same network and the
    same post-hoc EMA, to the bit. Resuming restores weights, AdamW moments, the learning-rate
    schedule, the EMAs and their snapshots, the noise generator, and the data where it stopped."""
    straight, straight_net = toy_training(tmp_path / "straight", init_seed=0)
    with pytest.raises(RuntimeError, match="killed"):
        toy_training(tmp_path / "resumed", init_seed=0, crash_after=6)
    assert (tmp_path / "resumed" / "last.pt").exists()
    # a run killed while writing its checkpoint leaves the temporary copy (hundreds of MB): the next one removes it
    from stepfoley import atomic

    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    left = tmp_path / "resumed" / f".last.pt.{atomic._HOST}-{dead.pid}-0123abcd.part"
    left.write_bytes(b"half a checkpoint")
    resumed, resumed_net = toy_training(tmp_path / "resumed", init_seed=1)
    assert not left.exists()
    # the figures are the whole run's, as the weights are (they go into the weights' metadata)
    assert resumed.steps == straight.steps == 12 and resumed.losses == straight.losses
    for name, value in straight_net.state_dict().items():
        assert torch.equal(resumed_net.state_dict()[name], value), name
    for name, value in straight.params.items():
        assert torch.equal(resumed.params[name], value), name


def test_ema_averages_read_from_a_checkpoint_go_to_the_training_device():
    """A checkpoint is read onto the CPU; the averages stayed there, and the first update after a
    resume on a GPU failed (tensors on two devices). The meta device stands in for the GPU."""
    from stepfoley.lab.training.ema import PowerEMA

    saved = PowerEMA(torch.nn.Linear(2, 2)).state_dict()
    net = torch.nn.Linear(2, 2, device="meta")
    ema = PowerEMA(net)
    ema.load_state_dict(saved)
    ema.update(net)
    assert {t.device.type for average in ema.averages for t in average.values()} == {"meta"}


def test_each_logged_learning_rate_is_the_one_its_step_ran_at(tmp_path):
    """The log read the scheduler after it had moved on: each line showed the next step's rate."""
    from stepfoley.lab.training.schedule import lr_multiplier
    from stepfoley.lab.training.trainer import LossModule, TrainConfig, train

    net, lines = torch.nn.Linear(3, 2), []
    loss = LossModule({"net": net}, lambda parts, b, g: ((parts["net"](b.latent) - b.target) ** 2).mean())
    config = TrainConfig(steps=12, batch_size=4, lr=0.1, warmup_steps=4, log_every=1)
    train(loss, net, toy_batches(0), config, torch.device("cpu"), None, log=lines.append)
    logged = [float(line.split("lr ")[1].split()[0]) for line in lines if line.startswith("step ")]
    assert logged == [float(f"{0.1 * lr_multiplier(s, 12, 4):.2e}") for s in range(12)]


def test_resumable_batches_resume_where_they_stopped_without_being_made_again(tmp_path):
    """Resuming made every earlier batch again to reach the data's place: two hours of an MMAudio
    ControlNet's run at its end. Batches resumable by their generator's state (the ControlNet's)
    are set there: the same run, to the bit, making only the batches still to come."""
    straight, straight_net = toy_training(tmp_path / "straight", init_seed=0, batches=resumable_toy_batches(0))
    with pytest.raises(RuntimeError, match="killed"):
        toy_training(tmp_path / "resumed", init_seed=0, batches=resumable_toy_batches(0, crash_after=6))
    made = []
    resumed, resumed_net = toy_training(tmp_path / "resumed", init_seed=1, batches=resumable_toy_batches(0, made=made))
    assert len(made) == 6 and resumed.losses == straight.losses
    for name, value in straight.params.items():
        assert torch.equal(resumed.params[name], value), name
    # and they are the batches the generator-function form makes, in the same order
    plain = toy_batches(0)
    assert all(torch.equal(next(plain).latent, b.latent) for b, _ in zip(resumable_toy_batches(0), range(5)))


def test_a_phase_that_ends_between_checkpoints_ends_with_one(tmp_path):
    # 10 steps, a checkpoint every 6: the last 4 were done again by a run killed in a later phase
    straight, _ = toy_training(tmp_path / "w", init_seed=0, steps=10)
    assert torch.load(tmp_path / "w" / "last.pt", weights_only=True)["step"] == 10
    again, _ = toy_training(tmp_path / "w", init_seed=1, steps=10)  # resumes at its end: nothing is redone
    assert again.losses == straight.losses
    assert all(torch.equal(again.params[name], value) for name, value in straight.params.items())


def snapshot_files(work) -> list[str]:
    from stepfoley.lab.training.trainer import SNAPSHOT_FOLDER

    return sorted(os.listdir(work / SNAPSHOT_FOLDER))


def snapshot_steps(work) -> dict[str, list[int]]:
    """The steps of the snapshot files in `work`, by the settings digest in their names."""
    steps: dict[str, list[int]] = {}
    for name in snapshot_files(work):
        _, step, digest = name.removesuffix(".pt").split("-")
        steps.setdefault(digest, []).append(int(step))
    return steps


def snapshot_file(work, step: int):
    from stepfoley.lab.training.trainer import SNAPSHOT_FOLDER

    [path] = (work / SNAPSHOT_FOLDER).glob(f"step-{step:08d}-*.pt")
    return path


def test_each_snapshot_is_written_once_to_a_file_of_its_own_that_the_checkpoints_name(tmp_path, monkeypatch):
    """Every checkpoint held every post-hoc EMA snapshot so far (4.6 GB each for an MMAudio
    ControlNet, rewritten at each one); each is now written once, and the average read from the
    files is the one the snapshots held in memory give, to the bit."""
    from stepfoley.lab.training import trainer

    written = []
    save = trainer._save_atomic
    monkeypatch.setattr(trainer, "_save_atomic", lambda obj, path: written.append(path.name) or save(obj, path))
    result, _ = toy_training(tmp_path / "w", init_seed=0)
    names = snapshot_files(tmp_path / "w")
    assert list(snapshot_steps(tmp_path / "w").values()) == [list(range(2, 13, 2))]  # one run's settings
    assert sorted(written) == sorted(names + ["last.pt"] * 2)  # checkpoints at steps 6 and 12
    assert torch.load(tmp_path / "w" / "last.pt", weights_only=True)["snapshots"] == names
    records = [record for name in names for record in torch.load(
        tmp_path / "w" / trainer.SNAPSHOT_FOLDER / name, weights_only=True)["records"]]
    assert [r["step"] for r in records] == [step for step in range(2, 13, 2) for _ in (0.05, 0.10)]
    in_memory, _ = toy_training(None, init_seed=0)
    for name, value in posthoc_ema(records, 0.05).items():
        assert torch.equal(result.params[name], value) and torch.equal(in_memory.params[name], value), name


@pytest.mark.parametrize("damage, words", [("missing", "is missing"), ("damaged", r"cannot be read \("),
                                           ("another run's", "is not this run's snapshot of step 4")])
def test_a_checkpoint_whose_snapshot_file_is_lost_is_refused_in_words(tmp_path, damage, words):
    from stepfoley.engine.errors import CheckpointError

    with pytest.raises(RuntimeError, match="killed"):
        toy_training(tmp_path / "w", init_seed=0, crash_after=6)
    lost = snapshot_file(tmp_path / "w", 4)
    if damage == "missing":
        lost.unlink()
    elif damage == "damaged":
        lost.write_bytes(b"half a snapshot")
    else:  # a run of other settings once in this folder
        toy_training(tmp_path / "other", init_seed=0, lr=1e-1)
        lost.write_bytes(snapshot_file(tmp_path / "other", 4).read_bytes())
    last = tmp_path / "w" / "last.pt"
    refused = re.escape(f"{last} cannot be resumed from: its EMA snapshot {lost}")
    with pytest.raises(CheckpointError, match=rf"^{refused} {words}.*Delete {re.escape(str(last))} to start"):
        toy_training(tmp_path / "w", init_seed=0)


def test_snapshot_files_of_a_run_started_over_are_not_mixed_in(tmp_path):
    """A run started over, its checkpoint deleted (as a refusal advises): its snapshot files are
    removed, not averaged in, nor those of steps its checkpoint had not reached when it was
    killed."""
    toy_training(tmp_path / "w", init_seed=0, steps=12)
    (tmp_path / "w" / "last.pt").unlink()
    with pytest.raises(RuntimeError, match="killed"):
        toy_training(tmp_path / "w", init_seed=0, crash_after=8)  # its snapshot of step 8 is after its checkpoint
    assert list(snapshot_steps(tmp_path / "w").values()) == [[2, 4, 6, 8]]
    result, _ = toy_training(tmp_path / "w", init_seed=0)
    clean, _ = toy_training(tmp_path / "clean", init_seed=0)
    assert snapshot_files(tmp_path / "w") == snapshot_files(tmp_path / "clean")
    assert all(torch.equal(result.params[name], value) for name, value in clean.params.items())


def test_a_checkpoint_of_other_settings_kept_under_another_name_keeps_its_snapshots(tmp_path):
    """A checkpoint put aside (renamed) while a training of other settings runs in the same
    folder: its snapshot files are left, said, and it resumes from them when put back (the
    other run deleted or replaced them)."""
    straight, _ = toy_training(tmp_path / "straight", init_seed=0, lr=1e-1)
    with pytest.raises(RuntimeError, match="killed"):
        toy_training(tmp_path / "w", init_seed=0, lr=1e-1, crash_after=6)
    os.rename(tmp_path / "w" / "last.pt", tmp_path / "w" / "kept.pt")
    said = []
    toy_training(tmp_path / "w", init_seed=0, steps=4, log=said.append)
    assert any("also holds 3 EMA snapshot file(s)" in line for line in said), said
    os.replace(tmp_path / "w" / "kept.pt", tmp_path / "w" / "last.pt")
    resumed, _ = toy_training(tmp_path / "w", init_seed=0, lr=1e-1)
    assert all(torch.equal(resumed.params[name], value) for name, value in straight.params.items())


def test_a_checkpoint_that_holds_its_snapshots_is_resumed_from_them(tmp_path):
    """An older StepFoley kept the snapshots inside each checkpoint: they are written out once."""
    from stepfoley.lab.training.trainer import SNAPSHOT_FOLDER

    straight, _ = toy_training(tmp_path / "straight", init_seed=0)
    with pytest.raises(RuntimeError, match="killed"):
        toy_training(tmp_path / "w", init_seed=0, crash_after=6)
    state = torch.load(tmp_path / "w" / "last.pt", weights_only=True)
    folder = tmp_path / "w" / SNAPSHOT_FOLDER
    state["snapshots"] = [record for name in state["snapshots"]
                          for record in torch.load(folder / name, weights_only=True)["records"]]
    torch.save(state, tmp_path / "w" / "last.pt")
    for name in os.listdir(folder):
        os.unlink(folder / name)
    resumed, _ = toy_training(tmp_path / "w", init_seed=0)
    assert snapshot_files(tmp_path / "w") == snapshot_files(tmp_path / "straight")
    assert all(torch.equal(resumed.params[name], value) for name, value in straight.params.items())


def test_a_checkpoint_of_other_settings_is_not_resumed(tmp_path):
    from stepfoley.engine.errors import CheckpointError

    with pytest.raises(RuntimeError, match="killed"):
        toy_training(tmp_path / "w", init_seed=0, crash_after=6)
    with pytest.raises(CheckpointError, match=r"a run with other settings \(lr\)"):
        toy_training(tmp_path / "w", init_seed=0, lr=1e-1)


def test_a_checkpoint_of_other_data_is_not_resumed(tmp_path, monkeypatch):
    """The same settings on another dataset list (or recipe, or frozen base) would resume the old
    run, even a finished one, and write its model out as the new one."""
    from stepfoley.engine.errors import CheckpointError
    from stepfoley.lab.training import trainer

    with pytest.raises(RuntimeError, match="killed"):
        toy_training(tmp_path / "w", init_seed=0, crash_after=6)
    real = trainer.TrainConfig
    monkeypatch.setattr(trainer, "TrainConfig", lambda **kw: real(**kw, data="another list"))
    with pytest.raises(CheckpointError, match=r"a run with other settings \(data\)"):
        toy_training(tmp_path / "w", init_seed=0)


@pytest.mark.parametrize("changed, what", [({"base_seed": 6}, "frozen base"), ({"hidden": 4}, "network layout")])
def test_a_checkpoint_beside_another_frozen_base_or_of_another_network_is_not_resumed(tmp_path, changed, what):
    """A ControlNet's run resumed beside a base trained again would ship the old base's
    ControlNet; one of another depth failed with a traceback in the optimizer."""
    from stepfoley.engine.errors import CheckpointError

    with pytest.raises(RuntimeError, match="killed"):
        toy_training(tmp_path / "w", init_seed=0, crash_after=6)
    with pytest.raises(CheckpointError, match=rf"a run with other settings \({what}\)"):
        toy_training(tmp_path / "w", init_seed=0, **changed)


def test_every_phase_of_another_recipe_is_refused_before_the_data_is_made(tmp_path, monkeypatch):
    """A work folder of a run with another data seed: its base checkpoint was refused only once
    the data was rendered again (its features replaced), the NAG ControlNet's only once the base
    had trained again; all of them are now named at once, before any work."""
    from dataclasses import replace

    from stepfoley.engine.errors import CheckpointError
    from stepfoley.lab.training import embedded as training, trainer

    before = training.EmbeddedRecipe()
    for name, config in training.phase_configs(before).items():  # a checkpoint as train() writes it
        (tmp_path / "work" / name).mkdir(parents=True)
        torch.save({"config": {**trainer._settings(config), "network layout": "x", "frozen base": "y"}, "step": 1},
                   tmp_path / "work" / name / "last.pt")
    monkeypatch.setattr(training, "_training_data", lambda *a, **k: pytest.fail("the data was made"))
    now = replace(before, data=replace(before.data, seed=before.data.seed + 1))
    with pytest.raises(CheckpointError) as refused:
        training.train_embedded(tmp_path / "work", tmp_path / "out.safetensors", now, torch.device("cpu"))
    message = str(refused.value)
    assert all(f"{tmp_path / 'work' / name / 'last.pt'} is a run with other settings: data; seed." in message
               for name in ("base", "controlnet", "loudness")), message
    assert "Resuming them would mix the two: delete them (or the whole work folder)" in message
    # train loudness, phase 3 alone
    with pytest.raises(CheckpointError, match=r"loudness/last.pt is a run with other settings: data; seed\. Resuming"):
        training.extend_with_loudness(tmp_path / "weights.safetensors", tmp_path / "work", tmp_path / "out.safetensors",
                                      now, torch.device("cpu"))
    # the same recipe goes on (to the data, here)
    with pytest.raises(pytest.fail.Exception, match="the data was made"):
        training.train_embedded(tmp_path / "work", tmp_path / "out.safetensors", before, torch.device("cpu"))


def test_a_checkpoint_trained_on_an_older_version_of_the_data_is_refused(tmp_path, monkeypatch):
    """Features of an older data version are rebuilt; the checkpoints trained on them were
    resumed over the new ones without a word (their latent statistics too)."""
    import json
    from dataclasses import asdict

    from stepfoley.engine.errors import CheckpointError
    from stepfoley.lab.training import embedded as training, miniworld_data, trainer

    recipe = training.EmbeddedRecipe()
    monkeypatch.setattr(miniworld_data, "DATA_VERSION", "1")
    monkeypatch.setattr(training, "DATA_VERSION", "1")
    older = training.phase_configs(recipe)["base"]
    monkeypatch.undo()
    (tmp_path / "work" / "base").mkdir(parents=True)
    torch.save({"config": {**trainer._settings(older), "network layout": "x", "frozen base": "y"}, "step": 1},
               tmp_path / "work" / "base" / "last.pt")
    with pytest.raises(CheckpointError, match=r"base/last.pt is a run with other settings: data\."):
        training.check_checkpoints(tmp_path / "work", training.phase_configs(recipe))
    # one of a StepFoley that did not record the version: the same recipe, but which data cannot be told
    unrecorded = {**trainer._settings(older), "data": json.dumps(asdict(recipe.data))}
    torch.save({"config": {**unrecorded, "network layout": "x", "frozen base": "y"}, "step": 1},
               tmp_path / "work" / "base" / "last.pt")
    with pytest.raises(CheckpointError, match=r"base/last.pt is a run with other settings: data \(it does not "
                       r"record the training data's version"):
        training.check_checkpoints(tmp_path / "work", training.phase_configs(recipe))


def test_a_checkpoint_of_an_older_stepfoley_names_what_it_did_not_record(tmp_path):
    from stepfoley.engine.errors import CheckpointError

    with pytest.raises(RuntimeError, match="killed"):
        toy_training(tmp_path / "w", init_seed=0, crash_after=6)
    state = torch.load(tmp_path / "w" / "last.pt", weights_only=True)
    for key in ("frozen base", "network layout"):  # not recorded before they were checked
        del state["config"][key]
    torch.save(state, tmp_path / "w" / "last.pt")
    with pytest.raises(CheckpointError, match=r"a run with other settings \(frozen base, network layout\)"):
        toy_training(tmp_path / "w", init_seed=0)


def test_a_warmup_longer_than_the_run_leaves_room_for_both_drops():
    # 150 steps with the recipe's 200 warm-up steps (train loudness --steps 150)
    assert lr_multiplier(119, 150, 200) == pytest.approx(1.0)
    assert lr_multiplier(120, 150, 200) == pytest.approx(0.1) and lr_multiplier(140, 150, 200) == pytest.approx(0.01)


def test_each_torchrun_process_trains_on_its_own_gpu(monkeypatch):
    from stepfoley.lab.training.trainer import process_device

    chosen = []
    monkeypatch.setattr(torch.cuda, "set_device", chosen.append)
    monkeypatch.setenv("WORLD_SIZE", "4")
    monkeypatch.setenv("LOCAL_RANK", "3")
    assert process_device(torch.device("cuda")) == torch.device("cuda", 3) and chosen == [torch.device("cuda", 3)]
    assert process_device(torch.device("cuda", 1)) == torch.device("cuda", 1)  # asked for: kept
    assert process_device(torch.device("cpu")) == torch.device("cpu")
    monkeypatch.setenv("WORLD_SIZE", "1")
    assert process_device(torch.device("cuda")) == torch.device("cuda")


TINY = ["--scenes", "4", "--held-out-scenes", "2", "--workers", "1", "--base-steps", "4", "--controlnet-steps", "3",
        "--batch-size", "2", "--warmup-steps", "1", "--device", "cpu"]


def test_train_checks_its_folders_before_it_starts(tmp_path, capsys, monkeypatch):
    from stepfoley import atomic
    from stepfoley.cli import main

    (tmp_path / "a-file").write_text("x")
    for what in (["embedded"], ["loudness"]):
        for folders, words in ((["--work", str(tmp_path / "a-file")], "cannot be made"),
                               (["--work", str(tmp_path / "a-file" / "sub")], "cannot be made"),
                               (["--work", str(tmp_path / "w"), "--out", str(tmp_path / "no" / "m.safetensors")],
                                "does not exist"),
                               (["--work", str(tmp_path / "w"), "--out", str(tmp_path)], "is a folder"),
                               (["--work", str(tmp_path / "w"), "--out", str(tmp_path / "a-file" / "m.safetensors")],
                                "which is a file, not a folder")):
            assert main(["train", *what, *folders, "--device", "cpu"]) == 2
            err = capsys.readouterr().err
            assert words in err and "Traceback" not in err
    # a work folder no file can be made in: a PermissionError traceback at the log's first line
    (tmp_path / "read-only").mkdir()
    monkeypatch.setattr(atomic, "can_make_file_in", lambda folder: "read-only" not in str(folder))
    assert main(["train", "embedded", *TINY, "--work", str(tmp_path / "read-only"),
                 "--out", str(tmp_path / "m.safetensors")]) == 2
    assert "No file can be made in the work folder" in capsys.readouterr().err
    # --work is made only once the checks pass: the weights found it in their way after the training
    assert main(["train", "embedded", *TINY, "--work", str(tmp_path / "new"), "--out", str(tmp_path / "new")]) == 2
    assert "is the --work folder; name the weights file to write" in capsys.readouterr().err


@pytest.mark.parametrize("out, words", [
    ("", "--out is empty; give the weights file to write"),
    ("results" + os.sep, "names a folder; give the weights file to write in it"),
    ("m" * 300 + ".safetensors", "--out: the file name"),
], ids=["empty", "trailing-separator", "name-too-long"])
def test_train_refuses_an_out_it_would_find_wrong_only_after_the_training(tmp_path, capsys, monkeypatch, out, words):
    """Each passed the checks: "" (an unset shell variable) trained into the default file and was
    refused there, as it exists, after the whole run; "results/" wrote a file named results; a
    name past the file system's 255 bytes failed when the weights were written."""
    from stepfoley.cli import main
    from stepfoley.commands import train as train_command

    monkeypatch.chdir(tmp_path)
    # taken, it would train for an hour here: said as the failure instead
    monkeypatch.setattr(train_command, "_train",
                        lambda args, device: pytest.fail(f"it trained with --out {args.out!r}"))
    for what in (["embedded"], ["loudness"], ["controlnet", "--weights", "w", "--data", "d.jsonl"]):
        assert main(["train", *what, "--work", str(tmp_path / "w"), "--out", out, "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert words in err and "Traceback" not in err, err
        assert not (tmp_path / "w").exists()


def test_train_embeddeds_help_gives_the_recipes_defaults():
    """Said by hand in the help (the command line imports no torch to show it): kept to the recipe."""
    import argparse
    import re

    from stepfoley.commands.train import add_arguments
    from stepfoley.lab.training.embedded import EmbeddedRecipe

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    [subcommands] = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    helps = {a.option_strings[0]: a.help for a in subcommands.choices["embedded"]._actions if a.option_strings}
    recipe = EmbeddedRecipe()
    expected = {"--scenes": recipe.data.scenes, "--held-out-scenes": recipe.data.held_out_scenes,
                "--workers": recipe.data_workers, "--base-steps": recipe.base_steps,
                "--controlnet-steps": recipe.controlnet_steps, "--base-lr": recipe.base_lr,
                "--controlnet-lr": recipe.controlnet_lr, "--loudness-steps": recipe.loudness_steps,
                "--loudness-lr": recipe.loudness_lr, "--batch-size": recipe.batch_size,
                "--warmup-steps": recipe.warmup_steps, "--data-seed": recipe.data.seed,
                "--checkpoint-every": recipe.checkpoint_every}
    for option, value in expected.items():
        said = re.search(r"default ([0-9.e-]+)", helps[option] or "")
        assert said and float(said.group(1)) == value, (option, helps[option], value)


@pytest.mark.skipif(os.name == "nt", reason="flock")
def test_a_second_training_in_a_work_folder_in_use_is_refused_before_any_work(tmp_path, capsys):
    """Two at once replaced each other's checkpoints at every save, and one rebuilt the features
    under the other."""
    from stepfoley.cli import main
    from stepfoley.lab.training.trainer import training_alone_in

    (tmp_path / "w").mkdir()
    with training_alone_in(tmp_path / "w"):  # the first, in its own process as far as flock goes
        assert main(["train", "embedded", *TINY, "--work", str(tmp_path / "w"),
                     "--out", str(tmp_path / "m.safetensors")]) == 2
    assert "Another training is running in the work folder" in capsys.readouterr().err
    assert sorted(os.listdir(tmp_path / "w")) == [".training.lock"]
    with training_alone_in(tmp_path / "w"):  # let go of when the first ends
        pass
    (tmp_path / "v" / ".training.lock").mkdir(parents=True)  # said, not a traceback
    assert main(["train", "embedded", *TINY, "--work", str(tmp_path / "v"),
                 "--out", str(tmp_path / "m.safetensors")]) == 2
    assert "lock file" in capsys.readouterr().err


@pytest.mark.parametrize("argv, words", [
    (["embedded", "--base-steps", "-1"], "--base-steps -1: give at least 1 (steps)"),
    (["embedded", "--scenes", "-5"], "--scenes -5: give at least 2 (scenes)"),
    (["embedded", "--batch-size", "0"], "--batch-size 0: give at least 1 (examples per batch)"),
    (["embedded", "--scenes", "4", "--held-out-scenes", "4"], "would leave none to train on"),
    (["embedded", "--held-out-scenes", "1"], "--held-out-scenes 1: give at least 2"),  # found after hours before
    (["embedded", "--base-lr", "nan"], "a learning rate is above 0"),
    (["embedded", "--device", "bogus"], "Unknown device 'bogus'"),
    # from a researcher's review: these started 500 processes, rendered the evaluation's unseen
    # scenes as training data, or ran out of memory listing 10^8 scenes
    (["embedded", "--workers", str(10 * (os.cpu_count() or 1))], "give at most"),
    (["loudness", "--workers", str(10 * (os.cpu_count() or 1))], "give at most"),
    (["embedded", "--data-seed", "1000"], "into those the evaluation keeps unseen; give at most 9"),
    (["embedded", "--scenes", "100000000"], "--scenes 100000000: at most 100000"),
    (["loudness", "--steps", "0"], "--steps 0: give at least 1"),
    (["loudness", "--weights", "."], "--weights . is a folder; give the embedded model's .safetensors file"),
    (["loudness", "--lr=-1e-3"], "a learning rate is above 0"),
    (["controlnet", "--weights", "w", "--data", "d.jsonl", "--depth", "0"], "--depth 0: give at least 1 (blocks)"),
    (["controlnet", "--weights", "w", "--data", "d.jsonl", "--checkpoint-every", "0"], "--checkpoint-every 0"),
    (["embedded", "--checkpoint-every", "0"], "--checkpoint-every 0: give at least 1 (steps)"),
    (["loudness", "--checkpoint-every", "-5"], "--checkpoint-every -5: give at least 1 (steps)"),
    (["embedded", "--background-db", "18"], "--background-db '18': give two numbers of dB, LO,HI"),
    (["embedded", "--background-db", "6,5,18,5"], "If you wrote decimals with a comma, write them with a point"),
    (["embedded", "--background-db", "30,18"], "give 0 <= LO <= HI <= 60 dB"),
    (["embedded", "--background-db=-6,18"], "give 0 <= LO <= HI <= 60 dB"),
    (["embedded", "--background-db", "18,nan"], "give 0 <= LO <= HI <= 60 dB"),
    (["embedded", "--background-db", "18,61"], "give 0 <= LO <= HI <= 60 dB"),
    # trained through the data, then a traceback from the allocator
    (["embedded", "--batch-size", "100000000000"], "--batch-size 100000000000: give at most 4096"),
    (["controlnet", "--weights", "w", "--data", "d.jsonl", "--batch-size", "5000"], "give at most 4096"),
    # a weights folder that is not there: exit 1 after the work folder was made
    (["controlnet", "--weights", "/nonexistent-weights", "--data", "d.jsonl"], "/nonexistent-weights does not exist"),
])
def test_train_refuses_numbers_it_cannot_train_with_before_any_work(tmp_path, capsys, argv, words):
    from stepfoley.cli import main

    assert main(["train", *argv, "--work", str(tmp_path / "w")]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert not (tmp_path / "w").exists()  # a refused run makes no work folder


def test_train_never_replaces_an_existing_out_file_without_force(tmp_path, capsys):
    from stepfoley.cli import main

    precious = tmp_path / "precious.safetensors"
    precious.write_text("my own weights")
    for what in (["embedded"], ["loudness"], ["controlnet", "--weights", "w", "--data", "d.jsonl"]):
        assert main(["train", *what, "--work", str(tmp_path / "w"), "--out", str(precious), "--device", "cpu"]) == 2
        assert "already exists; choose another file, or add --force" in capsys.readouterr().err
    assert precious.read_text() == "my own weights"
    os.mkfifo(tmp_path / "pipe.safetensors")  # with --force it was replaced by the weights
    assert main(["train", "embedded", "--work", str(tmp_path / "w"), "--out", str(tmp_path / "pipe.safetensors"),
                 "--force", "--device", "cpu"]) == 2
    assert "is not a regular file (a device or a pipe)" in capsys.readouterr().err
    # the in-place form its usage shows: --out naming the file it writes anyway is no surprise
    from stepfoley.commands.train import _is_default_out
    from stepfoley.cli import build_parser

    args = build_parser().parse_args(["train", "loudness", "--work", str(tmp_path / "w"), "--weights", str(precious),
                                      "--out", str(precious)])
    assert _is_default_out(args)


def _weights_trained_on(path, recorded=True, raw=None, **data):
    """Embedded weights (random) whose record says their base learned from the default data
    recipe changed by `data` (a JSON object's values); no recipe at all unless `recorded`; `raw`:
    the record's recipe as this text instead."""
    from dataclasses import asdict

    from stepfoley.engine.embedded.model import build_embedded_model, save_embedded_weights
    from stepfoley.lab.training.miniworld_data import DataRecipe

    model = build_embedded_model(random_weights=True)
    recipe = {"data": {**asdict(DataRecipe()), **data}}
    metadata = {"recipe": json.dumps(recipe) if raw is None else raw} if recorded else {}
    return save_embedded_weights(path, model.net, model.controlnet, model.codec, metadata=metadata)


def _received_recipes(monkeypatch, what):
    """The recipes `stepfoley train WHAT` hands its training (which is not run)."""
    from stepfoley.lab.training import embedded as training

    received = []
    monkeypatch.setattr(training, "train_embedded" if what == "embedded" else "extend_with_loudness",
                        lambda work, *args, **kwargs: received.append(args[-2]) or
                        {"data_seconds": 0, "total_seconds": 0, "processes": 1, "threads": 1})
    return received


@pytest.mark.parametrize("what", ["embedded", "loudness"])
def test_checkpoint_every_reaches_the_recipe(tmp_path, monkeypatch, what):
    # hours of training on a machine that may be taken away: how much a killed run redoes is the user's choice
    from stepfoley.cli import main
    from stepfoley.lab.training import embedded as training

    received = _received_recipes(monkeypatch, what)
    command = ["train", what, "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out.safetensors"),
               "--device", "cpu"]
    if what == "loudness":
        command += ["--weights", str(_weights_trained_on(tmp_path / "w.safetensors"))]
    assert main(command + ["--checkpoint-every", "37"]) == 0
    assert main(command) == 0
    assert [recipe.checkpoint_every for recipe in received] == [37, training.EmbeddedRecipe().checkpoint_every]


def test_train_loudness_takes_the_batch_and_warm_up_a_work_folders_checkpoint_was_trained_with(tmp_path,
                                                                                                monkeypatch):
    """It always used the recipe's: the loudness checkpoint of a work folder trained with others
    was refused, with no option to match it."""
    from stepfoley.cli import main

    received = _received_recipes(monkeypatch, "loudness")
    assert main(["train", "loudness", "--work", str(tmp_path / "work"), "--out", str(tmp_path / "out.safetensors"),
                 "--device", "cpu", "--weights", str(_weights_trained_on(tmp_path / "w.safetensors")),
                 "--batch-size", "3", "--warmup-steps", "7"]) == 0
    assert (received[0].batch_size, received[0].warmup_steps) == (3, 7)


def test_background_db_reaches_the_data_and_train_loudness_reads_it_from_the_weights(tmp_path, monkeypatch):
    # cleaner training targets (README, "cleaner targets"): the base learns from them, and the
    # loudness ControlNet added to it later from the same mixtures, without being told again
    from stepfoley.cli import main
    from stepfoley.lab.training.miniworld_data import DataRecipe

    received = _received_recipes(monkeypatch, "embedded")
    work = ["--work", str(tmp_path / "work"), "--out", str(tmp_path / "out.safetensors"), "--device", "cpu"]
    assert main(["train", "embedded", *work, "--background-db", "18,30.5"]) == 0
    assert main(["train", "embedded", *work]) == 0
    assert [r.data.dominance_db for r in received] == [(18.0, 30.5), (6.0, 18.0)]  # the default its help gives
    assert DataRecipe().dominance_db == (6.0, 18.0)

    received = _received_recipes(monkeypatch, "loudness")
    cleaner = _weights_trained_on(tmp_path / "cleaner.safetensors", dominance_db=[18, 30], scenes=96,
                                  shaped_prob=0.1)
    older = _weights_trained_on(tmp_path / "older.safetensors", recorded=False)
    assert main(["train", "loudness", *work, "--weights", str(cleaner)]) == 0
    assert main(["train", "loudness", *work, "--weights", str(older)]) == 0
    assert received[0].data == DataRecipe(dominance_db=(18.0, 30.0), scenes=96)  # its own shaping, not theirs
    assert received[1].data == DataRecipe()


@pytest.mark.parametrize("data", [
    {"dominance_db": [18]}, {"dominance_db": "18,30"}, {"scenes": 96.5}, {"scenes": True}, {"renamed_since": 1},
    # what `train embedded` itself refuses: no number, held-out scenes past the rest, seeds of the
    # evaluation's unseen scenes, a range upside down or past 60 dB, a length past any float
    {"dominance_db": [float("nan"), 18]}, {"held_out_scenes": 480}, {"seed": 10}, {"dominance_db": [30, 18]},
    {"dominance_db": [18, 61]}, {"scene_seconds": 10 ** 400}, {"fused_prob": 1.5},
    {"raw": "not JSON"}, {"raw": "[1, 2]"}, {"raw": '{"data": "6,18"}'}, {"raw": "[" * 100_000}])
def test_a_data_recipe_the_weights_record_oddly_is_not_read(tmp_path, data):
    from stepfoley.lab.training.embedded import recorded_data_recipe

    assert recorded_data_recipe(_weights_trained_on(tmp_path / "w.safetensors", **data)) is None
    assert recorded_data_recipe(_weights_trained_on(tmp_path / "ok.safetensors", scenes=96)).scenes == 96


def test_train_loudness_reads_a_damaged_training_record_as_none():
    # the weights' record is rewritten with the loudness phase's own; a damaged one is not a traceback
    from stepfoley.lab.training.embedded import _recorded_recipe

    for raw in ("not JSON", "[1]", '{"data": 3}', "[" * 100_000):
        assert _recorded_recipe({"recipe": raw}) == {"data": {}}
    assert _recorded_recipe({}) == {"data": {}}
    assert _recorded_recipe({"recipe": '{"base_steps": 8000, "data": {"scenes": 4}}'}) == {
        "base_steps": 8000, "data": {"scenes": 4}}


@pytest.mark.slow
def test_train_embedded_tiny_then_load(tmp_path):
    from stepfoley.engine.embedded.codec import MelCodecConfig
    from stepfoley.engine.embedded.model import _read_weights, build_embedded_model
    from stepfoley.cli import main

    out = tmp_path / "mini.safetensors"
    assert main(["train", "embedded", "--work", str(tmp_path / "work"), "--out", str(out), *TINY,
                 "--background-db", "18,30"]) == 0
    model = build_embedded_model(weights_path=out)
    assert json.loads(_read_weights(out)[1]["recipe"])["data"]["dominance_db"] == [18.0, 30.0]
    assert model.controlnet is not None and model.note == ""
    assert model.codec.config == MelCodecConfig()  # the latent it was trained in, read from the file
    log = (tmp_path / "work" / "train.log").read_text()
    assert "step 4/4" in log and "step 3/3" in log
    # the clips' features are kept for a rerun (resuming is proven by test_resumed_training_...)
    assert (tmp_path / "work" / "features.safetensors").exists()
    # run again on the finished folder: the figures are still the whole run's (the data's were
    # this run's 0.001 s of reading, and the total less than one of its phases)
    first = json.loads(_read_weights(out)[1]["figures"])
    assert main(["train", "embedded", "--work", str(tmp_path / "work"), "--out", str(out), *TINY,
                 "--background-db", "18,30", "--force"]) == 0
    again = json.loads(_read_weights(out)[1]["figures"])
    assert again["data_seconds"] == pytest.approx(first["data_seconds"], abs=0.01) and first["data_seconds"] > 0.05
    assert again["total_seconds"] >= again["data_seconds"] + again["base"]["seconds"]


@pytest.mark.parametrize("what", ["embedded", "loudness"])
def test_weights_that_appeared_at_out_during_training_are_kept(tmp_path, monkeypatch, capsys, what):
    # --out is checked at the start; another run may write it during hours of training: the
    # weights used to replace it all the same, without --force. (The training itself is the
    # slow tests'; here it is the write at its end, with a model's real weights.)
    from stepfoley.cli import main
    from stepfoley.engine.embedded.model import build_embedded_model, save_embedded_weights
    from stepfoley.lab.training import embedded as training

    out = tmp_path / "mine.safetensors"
    model = build_embedded_model(random_weights=True)

    def trained_while_another_run_wrote_out(*args, replace, **kwargs):
        out.write_text("another run's weights")
        save_embedded_weights(out, model.net, model.controlnet, model.codec, metadata={}, replace=replace)
        return {}

    monkeypatch.setattr(training, "train_embedded" if what == "embedded" else "extend_with_loudness",
                        trained_while_another_run_wrote_out)
    command = ["train", what, "--work", str(tmp_path / "work"), "--out", str(out), "--device", "cpu"]
    trained_before = tmp_path / "w.safetensors"  # what `train loudness` extends
    save_embedded_weights(trained_before, model.net, model.controlnet, model.codec, metadata={})
    assert main(command + (["--weights", str(trained_before)] if what == "loudness" else [])) == 1
    assert "already exists" in capsys.readouterr().err and out.read_text() == "another run's weights"
    from stepfoley.cli import build_parser
    from stepfoley.commands.train import _may_replace_out

    parse = build_parser().parse_args  # with --force, or no --out (the packaged weights), it is replaced
    assert _may_replace_out(parse(command[:-4] + command[-2:] + ["--out", str(out), "--force"]))
    assert _may_replace_out(parse(command[:-4] + command[-2:]))


@pytest.mark.parametrize("damage", ["cut short", "a folder", "a list", "no trainable", "text", "bytes", "a pipe",
                                    "code"])
def test_a_damaged_checkpoint_is_said_in_words(tmp_path, damage):
    """Each was a traceback (OSError, IsADirectoryError, AttributeError, KeyError 'trainable');
    a checkpoint cut short to a few bytes was already said."""
    from stepfoley.engine.errors import CheckpointError
    from stepfoley.lab.training.trainer import read_checkpoint

    last = tmp_path / "last.pt"
    if damage == "cut short":
        torch.save({"step": 1, "trainable": {"w": torch.zeros(4096)}}, last)
        with open(last, "r+b") as f:
            f.truncate(5000)
    elif damage == "a folder":
        last.mkdir()
    elif damage == "a list":
        torch.save([1, 2], last)
    elif damage == "text":  # KeyError 101
        last.write_text("hello world, not a checkpoint\n")
    elif damage == "bytes":  # struct.error
        last.write_bytes(b"\x80\x02J\x01")
    elif damage == "a pipe":  # torch.load waited for a writer for ever
        if not hasattr(os, "mkfifo"):
            pytest.skip("named pipes")
        os.mkfifo(last)
    elif damage == "code":  # refused by torch, whose words advised loading it unsafely
        torch.save({"step": 1, "trainable": _RunsCode()}, last)
    else:
        torch.save({"step": 1}, last)
    with pytest.raises(CheckpointError, match=rf"^{re.escape(str(last))} cannot be resumed from.*Delete it to start"
                       ) as refused:
        read_checkpoint(last)
    assert "weights_only" not in str(refused.value)


class _RunsCode:
    def __reduce__(self):
        return (print, ("a checkpoint that runs code",))


def test_a_gpu_running_out_of_memory_while_resuming_is_not_blamed_on_the_checkpoint(tmp_path, monkeypatch):
    """It was said as a checkpoint that does not fit, to be deleted."""
    from stepfoley.engine.errors import CheckpointError

    with pytest.raises(RuntimeError, match="killed"):
        toy_training(tmp_path / "w", init_seed=0, crash_after=6)

    def full(self, state):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(torch.optim.AdamW, "load_state_dict", full)
    with pytest.raises(torch.OutOfMemoryError) as raised:
        toy_training(tmp_path / "w", init_seed=0)
    assert not isinstance(raised.value, CheckpointError)


def test_another_networks_checkpoint_without_its_settings_is_said_in_words(tmp_path):
    """One without a recorded config skipped the layout check: load_state_dict's traceback."""
    from stepfoley.engine.errors import CheckpointError

    toy_training(tmp_path / "other", init_seed=0, hidden=4)
    state = torch.load(tmp_path / "other" / "last.pt", weights_only=True)
    del state["config"]
    (tmp_path / "w").mkdir()
    torch.save(state, tmp_path / "w" / "last.pt")
    with pytest.raises(CheckpointError, match="cannot be resumed from: what it holds does not fit this training"):
        toy_training(tmp_path / "w", init_seed=0)


@pytest.mark.parametrize("damage", ["cut short", "a folder"])
def test_a_damaged_features_file_is_rebuilt_or_said(tmp_path, monkeypatch, damage):
    """A features file cut short raised SafetensorError's traceback; it is rebuilt, as an old one is.
    One that cannot be removed (a folder under its name) is said in words."""
    from stepfoley.engine.embedded.model import build_embedded_model
    from stepfoley.engine.errors import InvalidInputError
    from stepfoley.lab.training import embedded as training

    class Rebuilding(Exception):
        pass

    def rebuild(*args, **kwargs):
        raise Rebuilding

    monkeypatch.setattr(training, "build_embedded_data", rebuild)
    features = tmp_path / "features.safetensors"
    if damage == "cut short":
        features.write_bytes(b"\x40\x00\x00\x00\x00\x00\x00\x00{\"a\":")
    else:
        (features / "inside").mkdir(parents=True)
    said = []
    with pytest.raises(Rebuilding if damage == "cut short" else InvalidInputError) as raised:
        training._training_data(build_embedded_model(random_weights=True), training.EmbeddedRecipe(), tmp_path, 0, 1,
                                said.append)
    assert any(f"{features} cannot be read" in line and "Rebuilding it." in line for line in said), said
    if damage == "cut short":
        assert not features.exists()
    else:
        assert "cannot be removed" in str(raised.value) and features.is_dir()


def two_processes(*command: str, logs=None, timeout: int = 300) -> subprocess.CompletedProcess:
    """`command` (a script and its arguments, or -m and a module's) run by torchrun in 2 processes
    on the CPU (gloo); with `logs`, a folder, each rank's output goes to files of its own there."""
    with socket.socket() as s:  # a free port for the rendezvous (torchrun does not take 0)
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    own_files = ["--log-dir", str(logs), "--redirects", "3"] if logs is not None else []
    return subprocess.run([sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr",
                           "127.0.0.1", "--master_port", port, *own_files, *command],
                          capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, timeout=timeout)


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path):
    out = tmp_path / "ddp.safetensors"
    done = two_processes("-m", "stepfoley", "train", "embedded", "--work", str(tmp_path / "work"), "--out", str(out),
                         *TINY, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert out.exists()
    log = (tmp_path / "work" / "train.log").read_text()
    assert "step 4/4" in log  # rank 0 logs; samples/s counts both processes


TWO_RANKS = """
import sys, time, torch
sys.path.insert(0, sys.argv[1])
from test_training import toy_batches, toy_training
import stepfoley.lab.training.trainer as trainer
from stepfoley.lab.training.trainer import distributed_context, every_rank_ends_as_rank_zero

import gc

rank, world = distributed_context()
made, alive = [], []
snapshot, update = trainer.PowerEMA.snapshot, trainer.PowerEMA.update
trainer.PowerEMA.snapshot = lambda self: made.append(1) or snapshot(self)


def counting(self, module):  # the snapshot records this process holds, at every step
    update(self, module)
    alive.append(sum(1 for o in gc.get_objects() if isinstance(o, dict) and "gamma" in o and "params" in o))


trainer.PowerEMA.update = counting
result, _ = toy_training(None, init_seed=3 + rank)  # each rank's first weights differ: DDP takes rank 0's
work = __import__("pathlib").Path(sys.argv[2]) / "work"
try:  # killed after the checkpoint at step 6, then resumed: the checkpoint's snapshots are rank 0's alone too
    toy_training(work, init_seed=3, crash_after=7)
except RuntimeError:
    pass
resumed = len(alive)
toy_training(work, init_seed=3)
torch.save({"params": result.params, "snapshots": len(made), "alive": max(alive[resumed:])},
           sys.argv[2] + f"/rank{rank}.pt")
# the ranks above 0 wait for rank 0's file, not in a collective, until they see it on the file system
flag = sys.argv[2] + "/made"
with every_rank_ends_as_rank_zero(rank, world, ready=lambda: __import__("os").path.exists(flag)):
    if rank == 0:
        time.sleep(2)
        open(flag, "w").close()
assert __import__("os").path.exists(flag)
"""


@pytest.mark.slow
def test_two_ranks_end_with_rank_zeros_average_and_only_it_keeps_snapshots(tmp_path):
    """Every rank kept all post-hoc EMA snapshots (32 copies of the network, in each process's
    memory), and after a resume every rank held the checkpoint's; rank 0 alone makes them, into
    files, and its average reaches every rank."""
    script = tmp_path / "two_ranks.py"
    script.write_text(TWO_RANKS)
    done = two_processes(str(script), os.path.dirname(__file__), str(tmp_path))
    assert done.returncode == 0, done.stderr[-3000:]
    zero, one = (torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in (0, 1))
    assert zero["snapshots"] >= 6 and one["snapshots"] == 0  # 12 steps, one every 2
    # none in memory after the resume either (the checkpoint held them on every rank), rank 0's in files
    assert zero["alive"] == one["alive"] == 0
    assert zero["params"].keys() == one["params"].keys()
    assert all(torch.equal(zero["params"][k], one["params"][k]) for k in zero["params"])


RANK_ZERO_FINDS_WRONG = """
import sys, time
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from test_training import snapshot_file, toy_training
import stepfoley.lab.training.trainer as trainer
from stepfoley.lab.training import embedded

rank, world = trainer.distributed_context()
work, case = Path(sys.argv[2]), sys.argv[3]
if case == "while rank 0 makes the data":  # refused on rank 0 after 4 s, while rank 1 sleeps between two looks
    embedded.sweep_stale_parts = lambda folder: time.sleep(4)
    embedded._training_data(None, embedded.EmbeddedRecipe(), work, rank, world, print)
else:
    if case == "while it trains":  # lost after rank 0 wrote it, found when rank 0 reads them all at the end
        average = trainer._Snapshots.average
        trainer._Snapshots.average = lambda self, *args: snapshot_file(work, 4).unlink() or average(self, *args)
    toy_training(work, init_seed=3)
"""


@pytest.mark.slow
@pytest.mark.parametrize("case", ["before the resume", "while it trains", "while rank 0 makes the data"])
def test_what_rank_zero_alone_finds_wrong_is_said_by_every_rank(tmp_path, case):
    """Rank 0 alone reads the EMA snapshot files, and checks and makes the training data; the
    other ranks went on, and died in their next collective with gloo's "Connection closed by
    peer" (under NCCL, hung until torchrun stopped them), or waited until torchrun stopped them
    without a word. Every rank says what rank 0 found, in its words."""
    from safetensors.torch import save_file

    work = tmp_path / "work"
    if case == "before the resume":
        with pytest.raises(RuntimeError, match="killed"):  # the checkpoint at step 6, the snapshot of step 4 lost
            toy_training(work, init_seed=3, crash_after=7)
        snapshot_file(work, 4).unlink()
    if case == "while rank 0 makes the data":
        work.mkdir()
        save_file({"x": torch.zeros(1)}, str(work / "features.safetensors"), metadata={"features_version": "2"})
    lost = re.escape(str(work / "ema-snapshots")) + r"/step-00000004-[0-9a-f]{12}\.pt is missing\. "
    said = {"before the resume": rf"CheckpointError: {re.escape(str(work / 'last.pt'))} cannot be resumed from: its "
                                 rf"EMA snapshot {lost}",
            "while it trains": rf"CheckpointError: This training's EMA snapshot {lost}",
            "while rank 0 makes the data": rf"InvalidInputError: {re.escape(str(work / 'features.safetensors'))} "
                                           r"holds the features of `stepfoley train controlnet`"}[case]
    script = tmp_path / "rank_zero_finds_wrong.py"
    script.write_text(RANK_ZERO_FINDS_WRONG)
    done = two_processes(str(script), os.path.dirname(__file__), str(work), case, logs=tmp_path / "logs")
    assert done.returncode == 1
    for output in each_ranks_errors(tmp_path / "logs"):
        assert re.search(said, output), output[-3000:]
        assert "Connection closed" not in output


RANK_ZERO_CANNOT_WRITE = """
import resource, signal, sys
sys.path.insert(0, sys.argv[1])
from pathlib import Path
from test_training import toy_batches, toy_training
from stepfoley.lab.training.trainer import distributed_context

rank, world = distributed_context()
work, case = Path(sys.argv[2]), sys.argv[3]
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails as on a full disk, not kills


def losing_its_disk_at(fetched_before: int):
    # rank 0 loses its disk or a folder as it fetches that batch: between two of its writes
    for fetched, batch in enumerate(toy_batches(0), 1):
        if rank == 0 and fetched == fetched_before:
            if case == "the disk full at a checkpoint":
                resource.setrlimit(resource.RLIMIT_FSIZE, (1024, resource.RLIM_INFINITY))
            elif case == "its folder replaced by a file at a checkpoint":
                work.rename(work.with_name("moved"))
                work.write_text("a file now")
            else:
                (work / "ema-snapshots").rename(work / "moved")
                (work / "ema-snapshots").write_text("a file now")
        yield batch


try:  # checkpoints at steps 3, 6, 9 and 12, snapshots at 4, 8 and 12
    toy_training(work, init_seed=3, snapshot_every=4, checkpoint_every=3,
                 batches=losing_its_disk_at(8 if case == "the snapshot folder replaced by a file" else 6))
finally:  # what this process says goes to a file too
    resource.setrlimit(resource.RLIMIT_FSIZE, (resource.RLIM_INFINITY, resource.RLIM_INFINITY))
"""


@pytest.mark.slow
@pytest.mark.parametrize("case", ["the disk full at a checkpoint", "its folder replaced by a file at a checkpoint",
                                  "the snapshot folder replaced by a file"])
def test_a_file_rank_zero_alone_cannot_write_is_said_by_every_rank(tmp_path, case):
    """Rank 0 alone writes the checkpoints and the EMA snapshot files: where it could not, it
    stopped with a traceback, and the other ranks died in their next collective with gloo's
    "Connection closed by peer" (under NCCL, hung until torchrun stopped them). Every rank says
    why rank 0 stopped, in its words, and the write leaves nothing half made."""
    from stepfoley.lab.training.trainer import SNAPSHOT_FOLDER

    work = tmp_path / "work"
    script = tmp_path / "rank_zero_cannot_write.py"
    script.write_text(RANK_ZERO_CANNOT_WRITE)
    done = two_processes(str(script), os.path.dirname(__file__), str(work), case, logs=tmp_path / "logs")
    assert done.returncode == 1
    step, kept_from = (8, 6) if "snapshot" in case else (6, 3)
    what = (rf"The EMA snapshot {re.escape(str(work / SNAPSHOT_FOLDER))}/step-00000008-[0-9a-f]{{12}}\.pt"
            if "snapshot" in case else rf"The training checkpoint {re.escape(str(work / 'last.pt'))}")
    why = r"it stopped part way: .+" if "disk" in case else "Not a directory"
    said = (rf"OutputError: {what} cannot be written \({why}\) at step {step}; nothing of it was kept\. Free space on "
            r"its disk or make its folder writable again, then run the same command again: it resumes from step "
            rf"{kept_from}, its last checkpoint\.")
    for output in each_ranks_errors(tmp_path / "logs"):
        assert re.search(said, output), output[-3000:]
        assert "Connection closed" not in output
    # each file whole, or none: the temporary copy of the one not written is gone
    kept = work if work.is_dir() else tmp_path / "moved"
    assert not [path for path in kept.rglob("*") if path.name.endswith(".part")]
    assert torch.load(kept / "last.pt", weights_only=True)["step"] == kept_from


CONTROLNET_NOT_WRITTEN = """
import sys, torch
from pathlib import Path
from stepfoley.engine.embedded.model import build_embedded_model
from stepfoley.lab.training import controlnet
from stepfoley.lab.training.trainer import distributed_context

rank, world = distributed_context()
folder = Path(sys.argv[1])
out = folder / "controlnets" / "rain.safetensors"
save = controlnet.save_controlnet


def its_folder_replaced_first(*args, **kwargs):  # while it trained, by a file
    out.parent.rename(folder / "moved")
    out.parent.write_text("a file now")
    return save(*args, **kwargs)


controlnet.save_controlnet = its_folder_replaced_first
controlnet.train_controlnet_on_mmaudio(folder, None, folder / "list.jsonl", folder / "work", out, depth=1, steps=1,
                                       batch_size=1, warmup_steps=0, checkpoint_every=0, device=torch.device("cpu"),
                                       model=build_embedded_model(random_weights=True))
"""


@pytest.mark.slow
def test_a_controlnet_rank_zero_cannot_write_is_said_by_every_rank(tmp_path):
    """Rank 0 alone writes the trained ControlNet: where it could not, the other ranks had ended
    as if it had, and torchrun said only that rank 0 failed."""
    from stepfoley.lab.miniworld import make_scene, write_scene

    paths = write_scene(make_scene(21, duration=9.0), tmp_path / "scene")
    clip = {"video": str(paths["video"]), "audio": str(paths["mixture"])}
    (tmp_path / "list.jsonl").write_text("".join(json.dumps({**clip, "caption": caption}) + "\n"
                                                 for caption in ("rain", "rain on a roof")))  # one for each rank
    (tmp_path / "controlnets").mkdir()
    script = tmp_path / "controlnet_not_written.py"
    script.write_text(CONTROLNET_NOT_WRITTEN)
    done = two_processes(str(script), str(tmp_path), logs=tmp_path / "logs")
    assert done.returncode == 1
    said = f"CheckpointError: Cannot make the folder {tmp_path / 'controlnets'} for the weights file rain.safetensors"
    for output in each_ranks_errors(tmp_path / "logs"):
        assert said in output, output[-3000:]
    assert os.listdir(tmp_path / "moved") == []


def test_a_log_file_that_cannot_take_a_line_is_said_once_and_the_training_goes_on(tmp_path, capsys):
    """Rank 0 alone writes train.log: a line it could not write stopped it alone, with a
    traceback, and the other ranks in their next collective. The lines go on to the screen."""
    from stepfoley.lab.training.embedded import _log_to

    (tmp_path / "train.log").mkdir()  # a folder in its place: IsADirectoryError, as a full disk's ENOSPC
    log = _log_to(tmp_path / "train.log")
    log("step 1/2")
    log("step 2/2")
    said = capsys.readouterr()
    assert said.out == "step 1/2\nstep 2/2\n"
    assert said.err == (f"stepfoley train: the log {tmp_path / 'train.log'} cannot be written (Is a directory); the "
                        "training goes on, its lines shown here only.\n")
    _log_to(None)("not rank 0's")
    assert capsys.readouterr().out == ""


@pytest.mark.slow
def test_a_work_folder_in_use_is_said_by_every_rank(tmp_path):
    """Rank 0 alone takes the work folder's lock: the other ranks were stopped by torchrun half a
    minute later, without a word."""
    from stepfoley.lab.training.trainer import training_alone_in

    (tmp_path / "w").mkdir()
    with training_alone_in(tmp_path / "w"):
        done = two_processes("-m", "stepfoley", "train", "embedded", *TINY, "--work", str(tmp_path / "w"),
                             "--out", str(tmp_path / "m.safetensors"), logs=tmp_path / "logs")
    assert done.returncode == 1  # torchrun's, for any rank that failed
    for output in each_ranks_errors(tmp_path / "logs"):
        assert f"stepfoley train: Another training is running in the work folder {tmp_path / 'w'}" in output, output


ONE_RANK_OF_A_BLOCK = """
import sys, time
import torch.distributed as dist
from torch.distributed import TCPStore
from stepfoley.engine.errors import InvalidInputError
from stepfoley.lab.training.trainer import every_rank_ends_as_rank_zero

port, rank, world = (int(a) for a in sys.argv[1:4])
arrives_after, refuses = float(sys.argv[4]), sys.argv[5]
store = TCPStore("127.0.0.1", port, is_master=False)
dist.distributed_c10d._get_default_store = lambda: store  # one store for every rank, as torchrun's rendezvous is
time.sleep(arrives_after)
print("arrived", time.time(), flush=True)
try:
    with every_rank_ends_as_rank_zero(rank, world):
        if rank == 0:
            time.sleep(0.5)
            if refuses:
                raise InvalidInputError(refuses)
except InvalidInputError as error:
    print("ended", time.time(), error, flush=True)
    sys.exit(1)
print("ended", time.time(), "passed", flush=True)
"""


def ranks_of_one_block(tmp_path, store, world: int, arrives_after=(), refuses: str = "",
                       attempt: int = 0) -> list[dict]:
    """Each of `world` processes (rank r arriving `arrives_after[r]` s late) through one
    every_rank_ends_as_rank_zero block, sharing `store` as torchrun's share the rendezvous's, rank 0
    raising `refuses` where given; under torchrun's restart `attempt`. For each rank: when it
    arrived and ended, and what it said."""
    script = tmp_path / "one_rank_of_a_block.py"
    script.write_text(ONE_RANK_OF_A_BLOCK)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TORCHELASTIC_RESTART_COUNT": str(attempt)}
    ranks = [subprocess.Popen([sys.executable, str(script), str(store.port), str(rank), str(world),
                               str(dict(enumerate(arrives_after)).get(rank, 0)), refuses],
                              stdout=subprocess.PIPE, text=True, env=env) for rank in range(world)]
    outcomes = []
    for process in ranks:
        arrived, ended = (line.split(" ", 2) for line in process.communicate(timeout=60)[0].splitlines())
        outcomes.append({"arrived": float(arrived[1]), "ended": float(ended[1]), "said": ended[2]})
    return outcomes


@pytest.mark.slow
def test_a_rank_says_rank_zeros_refusal_only_once_every_rank_has_it(tmp_path):
    """torchrun stops every process once one ends: a rank above 0 that ended as it read rank 0's
    refusal stopped rank 0 before its traceback, and a rank still on its way without a word."""
    from torch.distributed import TCPStore

    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    zero, one, late = ranks_of_one_block(tmp_path, store, 3, arrives_after=(0, 0, 3), refuses="the folder is in use")
    assert zero["said"] == one["said"] == late["said"] == "the folder is in use"
    assert min(zero["ended"], one["ended"]) >= late["arrived"]


@pytest.mark.slow
def test_a_rank_restarted_by_torchrun_waits_for_this_attempts_rank_zero(tmp_path):
    """torchrun's rendezvous keeps its store across the restarts of --max-restarts, and a restarted
    process numbers its blocks from 0 again: rank 1 said the refusal of the attempt before at once,
    and the run failed again, whatever rank 0 found now."""
    from torch.distributed import TCPStore

    store = TCPStore("127.0.0.1", 0, is_master=True, wait_for_workers=False)
    first = ranks_of_one_block(tmp_path, store, 2, refuses="another training was running")
    assert [rank["said"] for rank in first] == ["another training was running"] * 2
    again = ranks_of_one_block(tmp_path, store, 2, attempt=1)
    assert [rank["said"] for rank in again] == ["passed"] * 2


def each_ranks_errors(logs) -> list[str]:
    """What each of the 2 ranks of a two_processes run with `logs` wrote to stderr, in rank order."""
    outputs = sorted(logs.glob("*/attempt_0/*/stderr.log"))
    assert [path.parent.name for path in outputs] == ["0", "1"]
    return [path.read_text() for path in outputs]


def test_the_controlnet_target_and_condition_are_each_their_half_encoded_apart(tmp_path):
    """A VAE that attends over the whole clip (MMAudio's) puts each half's sound into the other's
    part of the whole clip's latent: the condition cut from it would carry its target, and the
    target cut from it its condition (paper Sec. 4.2: two segments that do not overlap). The
    condition is its half as the engine makes x̃ (-20 LUFS, limited), the target at its own
    level: a condition at the clip's level taught the ControlNet levels it never hears."""
    import soundfile as sf

    from stepfoley.engine.embedded.model import build_embedded_model
    from stepfoley.engine.session import conditioning_mix
    from stepfoley.lab.miniworld import make_scene, write_scene
    from stepfoley.lab.training.features import (FeatureSet, controlnet_batches, entries_digest,
                                                 extract_features, features_match, read_clip_audio)

    model = build_embedded_model(random_weights=True)
    paths = write_scene(make_scene(21, duration=9.0), tmp_path / "scene")
    quiet = tmp_path / "quiet.wav"  # the scene's sound 16 dB down: far from x̃'s -20 LUFS
    mixture, rate = sf.read(paths["mixture"], dtype="float32")
    sf.write(quiet, mixture * 10 ** (-16 / 20), rate, subtype="FLOAT")
    entries = [{"video": str(paths["video"]), "audio": str(quiet), "caption": "rain", "start": 0.0}]
    features = extract_features(model, entries, tmp_path / "features.safetensors", log=lambda m: None)
    assert features_match(features, entries, model.model_id)
    assert not features_match(features, [{**entries[0], "start": 0.5}], model.model_id)
    assert not features_match(features, entries, "another-model")
    data = FeatureSet.load(features)
    n = data.half_latent.shape[2]
    wave = torch.from_numpy(read_clip_audio(entries[0]["audio"], model.sample_rate, 0.0, model.max_duration))
    cut = wave.shape[0] // 2
    encoded = lambda audio: model.net.normalize(model.codec.encode(audio[None])[:, :n])[0]  # noqa: E731
    alone = [encoded(part) for part in (wave[:cut], wave[cut:])]
    heard = [encoded(torch.from_numpy(conditioning_mix([part.numpy()], model.sample_rate, len(part))))
             for part in (wave[:cut], wave[cut:])]
    batch = next(controlnet_batches(data, model.net.normalize, 32, seed=0))
    targets = set()
    for i in range(32):  # whichever half is the target, it and the condition are each encoded alone
        target = next(h for h in (0, 1) if torch.equal(batch.latent[i], alone[h]))
        torch.testing.assert_close(batch.cond_latent[i], heard[1 - target])
        assert not torch.allclose(batch.cond_latent[i], alone[1 - target], atol=0.1)
        targets.add(target)
    assert targets == {0, 1}
    assert len(entries_digest(entries)) == 64


def test_with_a_vae_posterior_the_controlnet_targets_are_drawn_from_it():
    """MMAudio's training flows toward x1 = mean + std·ε, not the posterior's mean; the audio
    condition stays the other half's mean (deterministic, as at generation)."""
    from stepfoley.lab.training.features import FeatureSet, controlnet_batches

    m, n, c = 4, 4, 3
    g = torch.Generator().manual_seed(0)
    halves = torch.randn(m, 2, n, c, generator=g)
    data = FeatureSet(halves, halves, torch.zeros(m, 2, 5), torch.zeros(m, 16, 4), torch.zeros(m, 77, 6),
                      torch.ones(m, dtype=torch.bool), torch.full((m, 2, n, c), 0.5))
    batch = next(controlnet_batches(data, lambda x: x, 4096, seed=0))
    noise = []
    for target, cond in zip(batch.latent, batch.cond_latent):
        clip, other = next((i, h) for i in range(m) for h in range(2) if torch.equal(cond, halves[i, h]))
        noise.append((target - halves[clip, 1 - other]) / 0.5)
    noise = torch.stack(noise)
    assert abs(float(noise.mean())) < 0.02 and abs(float(noise.std()) - 1.0) < 0.02  # ε ~ N(0, 1)
    exact = FeatureSet(halves, halves, data.clip, data.sync, data.text, data.has_video)
    first = next(controlnet_batches(exact, lambda x: x, 8, seed=0)).latent  # the mel codec: its latents as they are
    assert all(any(torch.equal(t, halves[i, h]) for i in range(m) for h in range(2)) for t in first)


def test_train_embedded_and_train_controlnet_leave_each_others_features_in_a_shared_work_folder(tmp_path):
    """Both keep WORK/features.safetensors: `train embedded` deleted a ControlNet's (hours of
    MMAudio's encoders) as stale, and `train controlnet` replaced an embedded run's unasked."""
    import json

    from safetensors.torch import save_file

    from stepfoley.engine.embedded.model import build_embedded_model
    from stepfoley.engine.errors import InvalidInputError
    from stepfoley.lab.miniworld import make_scene, write_scene
    from stepfoley.lab.training import embedded as training
    from stepfoley.lab.training.controlnet import train_controlnet_on_mmaudio

    model = build_embedded_model(random_weights=True)
    features = tmp_path / "work" / "features.safetensors"
    features.parent.mkdir()
    save_file({"x": torch.zeros(1)}, str(features), metadata={"features_version": "2", "model": "mmaudio-small_16k"})
    before = features.read_bytes()
    with pytest.raises(InvalidInputError, match="holds the features of `stepfoley train controlnet`"):
        training._training_data(model, training.EmbeddedRecipe(), features.parent, 0, 1, lambda line: None)
    assert features.read_bytes() == before

    save_file({"x": torch.zeros(1)}, str(features), metadata={"data_version": "2"})
    before = features.read_bytes()
    paths = write_scene(make_scene(21, duration=9.0), tmp_path / "scene")
    data = tmp_path / "list.jsonl"
    data.write_text(json.dumps({"video": str(paths["video"]), "audio": str(paths["mixture"]), "caption": "rain"}))
    with pytest.raises(InvalidInputError, match="holds the training data of `stepfoley train embedded`"):
        train_controlnet_on_mmaudio(tmp_path, None, data, features.parent, tmp_path / "new.safetensors", depth=1,
                                    steps=1, batch_size=1, warmup_steps=0, checkpoint_every=0,
                                    device=torch.device("cpu"), model=model)
    assert features.read_bytes() == before


def test_train_controlnet_refuses_an_existing_file_before_training(tmp_path):
    from stepfoley.engine.embedded.model import build_embedded_model
    from stepfoley.engine.errors import InvalidInputError
    from stepfoley.lab.training.controlnet import train_controlnet_on_mmaudio

    out = tmp_path / "mine.safetensors"
    out.write_text("my ControlNet")
    data = tmp_path / "list.jsonl"  # never read: the refusal comes first
    with pytest.raises(InvalidInputError, match="already exists; choose another --out, or add --force"):
        train_controlnet_on_mmaudio(tmp_path, None, data, tmp_path / "work", out, depth=1, steps=1, batch_size=1,
                                    warmup_steps=0, checkpoint_every=0, device=torch.device("cpu"),
                                    model=build_embedded_model(random_weights=True))
    assert out.read_text() == "my ControlNet"
    # more blocks than the base: refused before the data's features are made (the run's long part)
    with pytest.raises(InvalidInputError, match="A ControlNet of depth 999 has more blocks than the base"):
        train_controlnet_on_mmaudio(tmp_path, None, data, tmp_path / "work", tmp_path / "new.safetensors", depth=999,
                                    steps=1, batch_size=1, warmup_steps=0, checkpoint_every=0,
                                    device=torch.device("cpu"), model=build_embedded_model(random_weights=True))
    assert not (tmp_path / "work").exists()


def test_train_controlnet_is_the_same_whatever_ran_before_and_refuses_a_stale_run_before_its_features(tmp_path):
    """The layers a ControlNet adds were drawn from the process's generator: the same command
    gave two ControlNets (a first run, which made the features, and a second, which found them).
    A checkpoint of other features was refused only after every clip was encoded again."""
    from safetensors.torch import load_file

    from stepfoley.engine.embedded.model import build_embedded_model
    from stepfoley.engine.errors import CheckpointError
    from stepfoley.lab.miniworld import make_scene, write_scene
    from stepfoley.lab.training.controlnet import train_controlnet_on_mmaudio

    model = build_embedded_model(random_weights=True)
    paths = write_scene(make_scene(21, duration=9.0), tmp_path / "scene")
    data = tmp_path / "list.jsonl"
    data.write_text(json.dumps({"video": str(paths["video"]), "audio": str(paths["mixture"]), "caption": "rain"}))
    made = []
    for seed in (1, 2):
        torch.manual_seed(seed)
        out = tmp_path / f"cn{seed}.safetensors"
        made.append(load_file(str(train_controlnet_on_mmaudio(
            tmp_path, None, data, tmp_path / f"work{seed}", out, depth=1, steps=1, batch_size=2, warmup_steps=0,
            checkpoint_every=1, device=torch.device("cpu"), model=model))))
    assert made[0].keys() == made[1].keys() and all(torch.equal(made[0][k], made[1][k]) for k in made[0])

    stale = tmp_path / "work1" / "last.pt"
    state = torch.load(stale, weights_only=True)
    (tmp_path / "work1" / "features.safetensors").unlink()
    data_now = state["config"]["data"].rsplit(" ", 1)[0] + " 3"
    # a run of version 2; one from before the version was recorded, whose model's id also named
    # the ControlNet then in controlnets/; one of another list
    model_id, digest = data_now.split("|")[:2]
    for recorded, words in ((data_now.replace(" 3", " 2"), "the training features' version (2, now 3)"),
                            (f"{model_id}+nag|{digest}", "the training features' version (an older one, now 3)"),
                            (f"{model_id}|another list|features 3", "the dataset list or the model")):
        state["config"]["data"] = recorded
        torch.save(state, stale)
        with pytest.raises(CheckpointError, match=re.escape(f"other settings: {words}.")):
            train_controlnet_on_mmaudio(tmp_path, None, data, tmp_path / "work1", tmp_path / "cn3.safetensors",
                                        depth=1, steps=1, batch_size=2, warmup_steps=0, checkpoint_every=1,
                                        device=torch.device("cpu"), model=model)
        assert not (tmp_path / "work1" / "features.safetensors").exists()  # refused before the features


@pytest.mark.parametrize("given, words", [
    ("missing", "cannot be read (No such file or directory)"), ("folder", "is a folder"),
    ("latin-1", "is not UTF-8 text"), ("clip missing", "line 1: the audio file"),
    ("not an object", "line 1: each clip needs a caption"), ("start", "line 1: start must be"),
    ("model", "Unknown model variant 'bogus'"), ("audio only", "has no video clips"),
    ("controlnet there", "controlnets/small_16k.safetensors already exists; choose another --out, or add --force"),
    ("controlnet there, no --model", "controlnets/small_16k.safetensors already exists; choose another --out")])
def test_train_controlnet_says_a_list_or_model_given_wrong_before_anything_loads(tmp_path, capsys, given, words):
    """Each was a traceback once MMAudio had loaded (minutes), with --work left behind; a list of
    audio-text clips alone, and the variant's own ControlNet file there, were refused only once
    the model had loaded (and every clip was encoded)."""
    from stepfoley.cli import main

    (tmp_path / "weights").mkdir()
    data = tmp_path / "list.jsonl"
    (tmp_path / "a.wav").write_bytes(b"")
    lines = {"latin-1": "{\"caption\": \"caf\xe9\", \"audio\": \"a.wav\"}", "clip missing": '{"caption": "x", "audio": "b.wav"}',
             "not an object": "[1, 2]", "start": '{"caption": "x", "audio": "a.wav", "start": "0"}'}
    if given == "folder":
        data.mkdir()
    elif given != "missing":
        data.write_bytes(lines.get(given, '{"caption": "x", "audio": "a.wav"}').encode("latin-1"))
    if given.startswith("controlnet there"):
        (tmp_path / "weights" / "controlnets").mkdir()
        (tmp_path / "weights" / "controlnets" / "small_16k.safetensors").write_text("mine")
        (tmp_path / "weights" / "weights").mkdir()  # the variant the loader would pick without --model
        (tmp_path / "weights" / "weights" / "mmaudio_small_16k.pth").write_bytes(b"")
    model = {"model": ["--model", "bogus"], "controlnet there": ["--model", "small_16k"]}.get(given, [])
    assert main(["train", "controlnet", "--weights", str(tmp_path / "weights"), "--data", str(data), *model,
                 "--work", str(tmp_path / "work"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("line, words", [
    ('{"caption": "x", "video": "v\\u0000.mp4"}', "line 1: the video file 'v\\x00.mp4' cannot be a file's name"),
    ('{"caption": "x", "video": "\\ud800.mp4"}', "line 1: the video file '\\ud800.mp4' cannot be a file's name"),
    ('{"caption": "x", "video": "' + "v" * 300 + '.mp4"}', "cannot be a file's name (File name too long)"),
    ('{"caption": "x", "video": "v.mp4", "k": ' + "[" * 100_000 + "]" * 100_000 + "}", "line 1: not a clip"),
    ('{"caption": "x", "video": "v.mp4", "start": ' + "9" * 5000 + "}", "line 1: not a clip"),
    ('{"caption": "x", "video": "."}', "is a folder, not a file"),
], ids=["nul", "surrogate", "long-name", "nested", "long-number", "folder"])
def test_a_hostile_line_in_the_dataset_list_is_said_not_raised(tmp_path, capsys, line, words):
    """A NUL or a lone surrogate in a file name, a name too long, brackets nested thousands
    deep and a number of thousands of digits each ended `train controlnet` in a traceback."""
    from stepfoley.cli import main

    (tmp_path / "weights").mkdir()
    (tmp_path / "v.mp4").write_bytes(b"")
    data = tmp_path / "list.jsonl"
    data.write_text(line + "\n", encoding="utf-8", errors="surrogatepass")
    assert main(["train", "controlnet", "--weights", str(tmp_path / "weights"), "--data", str(data),
                 "--work", str(tmp_path / "work"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err, err
    assert not (tmp_path / "work").exists()


@pytest.mark.parametrize("is_file", ["3.11", "3.14"])
def test_a_clip_in_a_folder_this_user_may_not_enter_names_that_folder(tmp_path, permission_bits_apply, is_file):
    """A clip whose folder the user may not enter was "cannot be a file's name (Permission
    denied)" (the name is fine), or "is not there" where Path.is_file() says False (Python 3.14's
    is os.path.isfile()): the folder is what to open."""
    closed = tmp_path / "closed"
    closed.mkdir()
    (closed / "v.mp4").write_bytes(b"")
    data = tmp_path / "list.jsonl"
    data.write_text('{"caption": "rain", "video": "closed/v.mp4"}\n')
    closed.chmod(0)
    as_314 = "pathlib.Path.is_file = lambda self, **_: os.path.isfile(self)\n" if is_file == "3.14" else ""
    try:
        read = subprocess.run([sys.executable, "-c", f"import os, pathlib, sys\n{as_314}from stepfoley.lab.training."
                               "features import read_dataset_list\nread_dataset_list(sys.argv[1])", str(data)],
                              capture_output=True, text=True, preexec_fn=permission_bits_apply)
    finally:
        closed.chmod(0o755)
    assert (f"InvalidInputError: {data}, line 1: the video file {closed / 'v.mp4'} cannot be read: your user may "
            f"not enter the folder {closed} (permission denied); let your user enter it") in read.stderr, read.stderr


def test_a_dataset_list_is_read_as_json_lines_are_written(tmp_path):
    """A byte-order mark (Windows editors) was line 1's JSON error, and a caption holding U+2028
    or U+0085, which JSON keeps unescaped, was cut in two lines by str.splitlines(); a list with
    CR line ends (classic Mac) still reads."""
    from stepfoley.lab.training.features import read_dataset_list

    (tmp_path / "v.mp4").write_bytes(b"")
    data = tmp_path / "list.jsonl"
    captions = ["rain\u2028on a roof", "a door\x85slams", "steps"]
    lines = [json.dumps({"caption": c, "video": "v.mp4"}, ensure_ascii=False) for c in captions]
    data.write_text("\ufeff" + "\r".join(lines[:2]) + "\r\n" + lines[2] + "\n", encoding="utf-8")
    assert [e["caption"] for e in read_dataset_list(data)] == captions


@pytest.mark.parametrize("stop", ["ctrl-c", "sigterm"])
def test_ctrl_c_while_the_data_renders_stops_at_once_without_tracebacks(tmp_path, stop):
    """Ctrl-C reaches the whole process group, the data workers too: the command ends 130 with
    one line, not hung waiting for a worker the signal killed mid-scene. SIGTERM (timeout,
    docker stop, a scheduler) reaches the command alone: it stops the same way, ending 143, and
    its workers go with it (they were left running, orphaned, and the command said nothing)."""
    import os
    import signal
    import subprocess
    import sys
    import threading
    import time

    command = [sys.executable, "-m", "stepfoley", "train", "embedded", "--work", str(tmp_path / "w"),
               "--scenes", "40", "--held-out-scenes", "2", "--base-steps", "1", "--controlnet-steps", "1",
               "--loudness-steps", "1", "--batch-size", "2", "--workers", "2", "--out", str(tmp_path / "w.safetensors")]
    run = subprocess.Popen(command, start_new_session=True, stderr=subprocess.PIPE, stdout=subprocess.PIPE,
                           text=True, preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    rendering, errors = threading.Event(), []
    threading.Thread(target=lambda: errors.append(run.stderr.read()), daemon=True).start()

    def watch():
        for line in run.stdout:
            if line.startswith("data: rendering"):
                rendering.set()

    threading.Thread(target=watch, daemon=True).start()
    try:
        # the workers are up (the line comes once the pool is), then a second into their scenes;
        # a fixed wait could end before the imports on a loaded machine, or after the rendering on a fast one
        assert rendering.wait(120), "the command never started rendering"
        time.sleep(1)
        if stop == "ctrl-c":
            os.killpg(run.pid, signal.SIGINT)
        else:
            run.send_signal(signal.SIGTERM)
        assert run.wait(timeout=60) == (130 if stop == "ctrl-c" else 143)
        gone_by = time.monotonic() + 10  # no worker of the command's session is left (given a moment to exit)
        while True:
            try:
                os.killpg(run.pid, 0)
            except ProcessLookupError:
                break
            assert time.monotonic() < gone_by, "a worker outlived the command"
            time.sleep(0.1)
    finally:
        try:
            os.killpg(run.pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    deadline = time.monotonic() + 10
    while not errors and time.monotonic() < deadline:
        time.sleep(0.05)
    err = "".join(errors)
    assert f"stopped ({'Ctrl-C' if stop == 'ctrl-c' else 'SIGTERM'})" in err, err
    assert "Traceback" not in err and "KeyboardInterrupt" not in err, err


def test_a_recipe_starts_its_networks_from_the_same_weights_whatever_ran_before(tmp_path, monkeypatch):
    # the first weights came from torch's unseeded generator: one recipe trained twice differed
    # in every network, though the weights record a data seed as if it could be repeated
    from stepfoley.lab.training import embedded as training

    class Started(Exception):
        pass

    first_weights = []

    def stop_before_the_data(model, *args, **kwargs):
        first_weights.append({k: v.clone() for k, v in model.net.state_dict().items()})
        raise Started

    monkeypatch.setattr(training, "_training_data", stop_before_the_data)
    for earlier_draws in (1, 2):
        torch.manual_seed(1000 + earlier_draws)  # what other code left in the global generator
        with pytest.raises(Started):
            training.train_embedded(tmp_path / "work", tmp_path / "out.safetensors", training.EmbeddedRecipe(),
                                    torch.device("cpu"))
    first, again = first_weights
    assert all(torch.equal(first[name], again[name]) for name in first)


def test_train_refuses_weights_it_could_not_write_before_any_work(tmp_path, capsys, monkeypatch):
    # the packaged weights in a read-only install (here a kernel folder, which takes no file even
    # for root): the refusal came after the whole training, about 53 minutes of it
    from pathlib import Path

    from stepfoley.cli import main
    from stepfoley.engine.embedded import model as embedded_model

    monkeypatch.setattr(embedded_model, "WEIGHTS_PATH", Path("/proc/stepfoley_mini.safetensors"))
    for what, out in ((["embedded"], []), (["embedded"], ["--out", "/proc/mine.safetensors"]),
                      (["loudness"], [])):  # loudness: its --weights, the packaged ones when not given
        assert main(["train", *what, "--work", str(tmp_path / "w"), "--device", "cpu", *out]) == 2
        err = capsys.readouterr().err
        assert "in a folder where no file can be made" in err and "give --out FILE" in err, err
    assert not (tmp_path / "w").exists()


@pytest.mark.parametrize("made", ["read-only", "a file"])
def test_train_controlnet_refuses_a_weights_folder_it_could_not_write_into_before_any_work(tmp_path, capsys,
                                                                                         monkeypatch, made):
    """Without --out the ControlNet goes into WEIGHTS/controlnets/, made when it is written:
    weights on a read-only share (or a file named controlnets) refused it after the training."""
    from stepfoley import atomic
    from stepfoley.cli import main
    from stepfoley.commands import train as train_command

    weights = tmp_path / "read-only" if made == "read-only" else tmp_path / "weights"
    weights.mkdir()
    if made == "a file":
        (weights / "controlnets").write_text("mine")
    monkeypatch.setattr(atomic, "can_make_file_in", lambda folder: "read-only" not in str(folder))
    monkeypatch.setattr(train_command, "_train", lambda args, device: pytest.fail("it trained"))
    (tmp_path / "v.mp4").write_bytes(b"")
    (tmp_path / "d.jsonl").write_text('{"caption": "rain", "video": "v.mp4"}\n')
    assert main(["train", "controlnet", "--weights", str(weights), "--data", str(tmp_path / "d.jsonl"),
                 "--work", str(tmp_path / "w"), "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert f"would be written in {weights / 'controlnets'}, where no file can be made" in err, err
    assert "give --out FILE" in err and not (tmp_path / "w").exists()


@pytest.mark.parametrize("what, shorter", [(["embedded"], ["--base-steps", "2"]), (["embedded"], ["--scenes", "40"]),
                                           (["loudness"], ["--steps", "3"])])
def test_a_trial_replaces_the_packaged_weights_only_with_force(tmp_path, capsys, monkeypatch, what, shorter):
    # `train embedded --work w --base-steps 2`, a trial, replaced the weights demo, generate and
    # serve use by default, with two steps' worth of training
    from stepfoley.cli import main
    from stepfoley.engine.embedded.model import WEIGHTS_PATH

    received = _received_recipes(monkeypatch, what[0])
    work = ["--work", str(tmp_path / "w"), "--device", "cpu"]
    for out in ([], ["--out", str(WEIGHTS_PATH)]):
        assert main(["train", *what, *work, *shorter, *out]) == 2
        err = capsys.readouterr().err
        assert f"{' '.join(shorter)} of the recipe's" in err and "--out FILE for a trial" in err, err
    assert received == [] and not (tmp_path / "w").exists()
    assert main(["train", *what, *work, *shorter, "--out", str(tmp_path / "trial.safetensors")]) == 0
    assert main(["train", *what, *work, *shorter, "--force"]) == 0  # asked for
    assert len(received) == 2


def test_a_trial_replaces_the_weights_train_loudness_extends_only_with_force(tmp_path, capsys, monkeypatch):
    # `train loudness --weights mine.safetensors --steps 3` replaced a user's own retrained
    # weights (about 55 minutes of training) with a three-step trial, where the packaged ones
    # were kept from that
    import shutil

    from stepfoley.cli import main
    from stepfoley.engine.embedded.model import WEIGHTS_PATH

    mine = tmp_path / "mine.safetensors"
    shutil.copyfile(WEIGHTS_PATH, mine)
    received = _received_recipes(monkeypatch, "loudness")
    command = ["train", "loudness", "--work", str(tmp_path / "w"), "--device", "cpu", "--weights", str(mine),
               "--steps", "3"]
    for out in ([], ["--out", str(mine)]):
        assert main(command + out) == 2
        err = capsys.readouterr().err
        assert f"would replace the weights it extends ({mine})" in err and "--out FILE for a trial" in err, err
    assert received == [] and not (tmp_path / "w").exists()
    assert main(command + ["--out", str(tmp_path / "trial.safetensors")]) == 0
    assert main(command + ["--force"]) == 0  # asked for
    assert main(command[:-2]) == 0  # the recipe's run retrains them in place, as that file is for
    assert len(received) == 3


def test_the_weights_of_an_installed_package_are_replaced_only_with_force(tmp_path, capsys, monkeypatch):
    # pip-installed: `train embedded --work w` (the README's command) replaced the model inside
    # site-packages for every user of that Python, and `eval --choose-alpha --write` wrote there too
    import shutil

    from stepfoley.cli import main
    from stepfoley.engine.embedded import model as embedded_model

    installed = tmp_path / "lib" / "python3.12" / "site-packages" / "stepfoley" / "stepfoley_mini.safetensors"
    installed.parent.mkdir(parents=True)
    shutil.copyfile(embedded_model.WEIGHTS_PATH, installed)
    monkeypatch.setattr(embedded_model, "WEIGHTS_PATH", installed)
    received = _received_recipes(monkeypatch, "embedded")
    work = ["--work", str(tmp_path / "w"), "--device", "cpu"]
    assert main(["train", "embedded", *work]) == 2
    err = capsys.readouterr().err
    assert f"inside the installed stepfoley package ({installed})" in err and "--force" in err, err
    assert main(["train", "embedded", *work, "--out", str(tmp_path / "mine.safetensors")]) == 0
    assert main(["train", "embedded", *work, "--force"]) == 0
    assert len(received) == 2
    assert main(["eval", "--choose-alpha", "--write", "--json", str(tmp_path / "alpha.json")]) == 2
    err = capsys.readouterr().err
    assert "--write would record the choice in the weights inside the installed stepfoley package" in err, err
    (tmp_path / "alpha.json").write_text("{}")  # a rerun: --force, which the JSON asks for, is not consent
    assert main(["eval", "--choose-alpha", "--write", "--force", "--json", str(tmp_path / "alpha.json")]) == 2
    assert "inside the installed stepfoley package" in capsys.readouterr().err


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="a named pipe needs POSIX")
def test_a_dataset_list_that_is_a_pipe_a_device_or_too_large_is_refused_without_reading_it(tmp_path, capsys):
    """`train controlnet --data PIPE` waited for ever for a writer, `--data /dev/zero` read without
    end, and a file of gigabytes (a video given as the list) was read whole into memory."""
    import threading

    from stepfoley.cli import main

    (tmp_path / "weights").mkdir()
    pipe = tmp_path / "list.jsonl"
    os.mkfifo(pipe)
    link = tmp_path / "link.jsonl"
    link.symlink_to(pipe)  # through a link too
    huge = tmp_path / "huge.jsonl"
    with open(huge, "wb") as f:  # sparse: no disk used, and never read
        f.truncate(4 * 2**30)
    cases = [(str(pipe), "is not a regular file (a device or a pipe); give the JSON Lines file of the clips."),
             (str(link), "is not a regular file (a device or a pipe); give the JSON Lines file of the clips."),
             (str(huge), "is larger than a list of clips can be (4,096 MiB, at most 1,024 MiB); give the JSON "
                         "Lines file of the clips, not a video or an archive.")]
    if os.path.exists("/dev/zero"):
        cases.append(("/dev/zero", "is not a regular file (a device or a pipe); give the JSON Lines file"))
    for data, words in cases:
        codes = []
        run = threading.Thread(target=lambda: codes.append(main([
            "train", "controlnet", "--weights", str(tmp_path / "weights"), "--data", data,
            "--work", str(tmp_path / "work"), "--device", "cpu"])), daemon=True)
        run.start()
        run.join(30)
        if run.is_alive():  # waiting on the pipe: a writer lets it go, and the test fails
            with open(os.open(pipe, os.O_WRONLY | os.O_NONBLOCK), "wb"):
                pass
            run.join(30)
            pytest.fail(f"--data {data} was waited on")
        assert codes == [2], data
        err = capsys.readouterr().err
        assert f"The dataset list {data} {words}" in err and "Traceback" not in err, err
        assert not (tmp_path / "work").exists()


def test_a_clip_start_past_its_files_end_is_refused_with_its_line_before_anything_loads(tmp_path, capsys):
    """A `start` past the end of the clip's file (a huge number, or seconds of another clip) was
    taken, and the clip was learned from as silence (an integer of hundreds of digits raised
    OverflowError once the features were being made)."""
    from stepfoley.cli import main
    from stepfoley.engine.errors import InvalidInputError
    from stepfoley.lab.miniworld import make_scene, write_scene
    from stepfoley.lab.training.features import read_clip_audio, read_dataset_list

    paths = write_scene(make_scene(21, duration=3.0), tmp_path / "scene")  # a real 3 s video and its sound
    video, audio = paths["video"], paths["mixture"]
    (tmp_path / "weights").mkdir()
    data = tmp_path / "list.jsonl"
    within = {"caption": "rain", "video": str(video), "start": 1.5}
    cases = [({"caption": "rain", "video": str(video), "start": 3.5}, f"line 3: start 3.5 s is past the end of the "
              f"video file {video}, which lasts 3.00 s; give a start within the clip."),
             ({"caption": "rain", "audio": str(audio), "start": 10**30}, f"line 3: start 1e+30 s is past the end of "
              f"the audio file {audio}, which lasts 3.00 s"),
             ({"caption": "rain", "video": str(video), "start": 10**400}, "line 3: start must be the clip's first "
              "second, a number from 0 to the clip's length.")]
    for past, words in cases:
        data.write_text(json.dumps(within) + "\n\n" + json.dumps(past) + "\n")
        assert main(["train", "controlnet", "--weights", str(tmp_path / "weights"), "--data", str(data),
                     "--work", str(tmp_path / "work"), "--device", "cpu"]) == 2
        err = capsys.readouterr().err
        assert f"{data}, {words}" in err and "Traceback" not in err, err
        assert not (tmp_path / "work").exists()
    data.write_text(json.dumps(within) + "\n")
    assert read_dataset_list(data, check_starts=True)[0]["start"] == 1.5
    # a file that changed after the list was checked: refused as its clip is read, not learned as silence
    with pytest.raises(InvalidInputError, match=r"starts at 3.5 s, past the end of its sound \(3.00 s\)"):
        read_clip_audio(str(audio), 16000, 3.5, 8.0)


def test_clip_starts_are_not_checked_again_on_a_resume_whose_features_came_from_this_list(tmp_path, monkeypatch,
                                                                                          capsys):
    """Each clip file's header is read to check its start: minutes for a list of 100,000s of clips,
    spent again at every resume although the features made from this very list are what is trained."""
    import stepfoley.lab.training.features as features
    from safetensors.torch import save_file
    from stepfoley.cli import main
    from stepfoley.lab.miniworld import make_scene, write_scene

    video = write_scene(make_scene(21, duration=3.0), tmp_path / "scene")["video"]
    data = tmp_path / "list.jsonl"
    data.write_text(json.dumps({"caption": "rain", "video": str(video), "start": 1.5}) + "\n")
    (tmp_path / "weights").mkdir()  # no model: the command stops when it loads, after the checks
    (tmp_path / "work").mkdir()
    read = []
    monkeypatch.setattr(features, "clip_seconds", lambda path: read.append(path) or 3.0)
    for made_from, headers_read in ((features.entries_digest(features.read_dataset_list(data)), 0), ("another", 1)):
        save_file({"x": torch.zeros(1)}, str(tmp_path / "work" / "features.safetensors"),
                  metadata={"entries_sha256": made_from})
        read.clear()
        main(["train", "controlnet", "--weights", str(tmp_path / "weights"), "--data", str(data),
              "--work", str(tmp_path / "work"), "--device", "cpu"])
        capsys.readouterr()
        assert read == [str(video)] * headers_read


def test_train_controlnet_refuses_an_out_that_is_one_of_its_inputs_even_with_force(tmp_path, capsys):
    """`--out FILE --force` naming the --data list, a clip of it or an official weights file would
    have replaced it with the ControlNet once trained; `eval --json` refuses its equivalent."""
    from stepfoley.cli import main

    weights = tmp_path / "weights"
    (weights / "ext_weights" / "DFN5B-CLIP-ViT-H-14-384").mkdir(parents=True)
    vae = weights / "ext_weights" / "v1-16.pth"
    vae.write_bytes(b"the official VAE")
    clip_config = weights / "ext_weights" / "DFN5B-CLIP-ViT-H-14-384" / "open_clip_config.json"
    clip_config.write_text("{}")
    (tmp_path / "v.mp4").write_bytes(b"a video")
    data = tmp_path / "list.jsonl"
    data.write_text('{"caption": "rain", "video": "v.mp4"}\n')
    link = tmp_path / "link.jsonl"
    link.symlink_to(data)
    before = {p: p.read_bytes() for p in (vae, clip_config, tmp_path / "v.mp4", data)}
    cases = [(data, "the --data list"), (link, "the --data list"),
             (vae, f"the 16 kHz mel VAE (audio <-> latent) in the weights folder ({vae})"),
             (clip_config, f"in {clip_config.parent}, an official folder of the weights"),
             (tmp_path / "v.mp4", f"the video file of a clip in --data ({tmp_path / 'v.mp4'})")]
    for out, words in cases:
        assert main(["train", "controlnet", "--weights", str(weights), "--data", str(data), "--model", "small_16k",
                     "--work", str(tmp_path / "work"), "--out", str(out), "--force", "--device", "cpu"]) == 2, out
        err = capsys.readouterr().err
        assert f"--out {out} is {words}, which this training reads; write the ControlNet to another file" in err, err
        assert not (tmp_path / "work").exists()
    assert {p: p.read_bytes() for p in before} == before
