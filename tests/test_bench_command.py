"""`stepfoley bench`: each benchmark runs through the command and prints its figures (tiny
sizes here; the figures themselves are read by people, not asserted)."""

import re

import pytest

from stepfoley.cli import main
from stepfoley.commands.bench import BENCHMARKS


def test_every_benchmark_module_exists_and_takes_argv():
    import importlib
    import inspect

    for module_name, _ in BENCHMARKS.values():
        module = importlib.import_module(f"stepfoley.bench.{module_name}")
        assert "argv" in inspect.signature(module.main).parameters


def test_bench_bridge_prints_its_figures(capsys):
    assert main(["bench", "bridge", "--pings", "20", "--requests", "5", "--steps", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"ping round trip \(20\): p50 [\d.]+ ms", out)
    assert re.search(r"overhead beyond generation \(5 requests", out)
    assert "5 done" in out


def test_bench_weights_load_prints_its_figures(capsys):
    assert main(["bench", "weights-load", "--mb", "1", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert ".pth" in out and ".safetensors" in out


def test_unknown_benchmark_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "gpu-magic"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err
