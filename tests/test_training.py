"""Training: schedule, post-hoc EMA, objectives, and the real trainer at tiny scale (one process
and a 2-process DistributedDataParallel run on the CPU with gloo)."""

import os
import socket
import subprocess
import sys

import pytest
import torch

from stepfoley.engine.training.ema import PowerEMA, posthoc_ema, posthoc_weights, power_ema_beta, sigma_rel_to_gamma
from stepfoley.engine.training.objectives import interpolate
from stepfoley.engine.training.schedule import lr_multiplier


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


TINY = ["--scenes", "4", "--held-out-scenes", "2", "--workers", "1", "--base-steps", "4", "--controlnet-steps", "3",
        "--batch-size", "2", "--warmup-steps", "1", "--device", "cpu"]


@pytest.mark.slow
def test_train_embedded_tiny_then_load(tmp_path):
    from stepfoley.engine.embedded.model import build_embedded_model
    from stepfoley.cli import main

    out = tmp_path / "mini.safetensors"
    assert main(["train", "embedded", "--work", str(tmp_path / "work"), "--out", str(out), *TINY]) == 0
    model = build_embedded_model(weights_path=out)
    assert model.controlnet is not None and model.note == ""
    log = (tmp_path / "work" / "train.log").read_text()
    assert "step 4/4" in log and "step 3/3" in log
    # the checkpoint of the finished run resumes without redoing anything
    assert (tmp_path / "work" / "features.safetensors").exists()


@pytest.mark.slow
def test_two_process_ddp_on_cpu(tmp_path):
    out = tmp_path / "ddp.safetensors"
    with socket.socket() as s:  # a free port for the rendezvous (torchrun does not take 0)
        s.bind(("127.0.0.1", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", port,
           "-m", "stepfoley", "train", "embedded", "--work", str(tmp_path / "work"), "--out", str(out), *TINY]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert out.exists()
    log = (tmp_path / "work" / "train.log").read_text()
    assert "step 4/4" in log  # rank 0 logs; samples/s counts both processes
