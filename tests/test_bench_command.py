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
    assert main(["bench", "bridge", "--pings", "20", "--requests", "5", "--steps", "1", "--flood-pings", "1"]) == 0
    out = capsys.readouterr().out
    assert re.search(r"ping round trip \(20\): p50 [\d.]+ ms", out)
    assert re.search(r"overhead beyond generation \(5 requests", out)
    assert "5 done" in out
    assert re.search(r"floods /status at \d+k datagrams/s: [01]/1 without the flood limit, [01]/1 with it", out)


def test_bench_weights_load_prints_its_figures(capsys):
    assert main(["bench", "weights-load", "--mb", "1", "--repeat", "1"]) == 0
    out = capsys.readouterr().out
    assert ".pth" in out and ".safetensors" in out


def test_bench_weights_load_on_a_folder_without_weights_says_so(capsys, tmp_path):
    assert main(["bench", "weights-load", "--dir", str(tmp_path)]) == 0  # it printed nothing at all
    assert capsys.readouterr().out == f"no official MMAudio .pth file in {tmp_path} (docs/weights.md says where " \
                                      "each goes): nothing to time\n"


def test_unknown_benchmark_is_refused(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["bench", "gpu-magic"])
    assert exit_info.value.code == 2
    assert "invalid choice" in capsys.readouterr().err


def test_bench_variations_prints_the_ratio_and_finds_the_stems_equal(capsys):
    assert main(["bench", "variations", "--model", "tiny-random", "--device", "cpu", "--counts", "1,3",
                 "--steps", "1", "--seconds", "1", "--threads", "1"]) == 0
    out = capsys.readouterr().out
    assert "second layer (method nag), fp32, 1 of " in out  # the thread count it ran with
    assert re.search(r"N=1: one job [\d.]+ s, 1 serial jobs [\d.]+ s, ratio [\d.]+x", out)
    assert re.search(r"N=3: one job [\d.]+ s, 3 serial jobs [\d.]+ s, ratio [\d.]+x; largest stem difference "
                     r"[\d.e+-]+; .*\(the same take by log-mel distance\)", out)
    # one take in sound; two seeds are two takes
    same, other = map(float, re.search(r"N=3: .*log-mel distance from the serial take ([\d.]+) dB "
                                       r"\(two seeds' takes: ([\d.]+) dB\)", out).groups())
    assert same <= 0.01 and other >= 1.0
    assert re.search(r"N=1: .*log-mel distance from the serial take [\d.]+ dB \(within 0.001\); ranked by seed", out)
    # where the time went, each side: the phases the jobs' metadata times and the rest, adding up to the wall time
    phases = (r"video_features ([\d.]+) s, sampling ([\d.]+) s, decoding ([\d.]+) s, finishing ([\d.]+) s, "
              r"rest ([\d.-]+) s")
    line = re.search(rf"N=3: one job ([\d.]+) s, 3 serial jobs ([\d.]+) s.*\n  one job: {phases}; 3 jobs: {phases}",
                     out)
    assert line, out
    wall_one, wall_serial, *parts = map(float, line.groups())
    # the median run's parts (3 repeats): within the rounding of six printed figures
    assert sum(parts[:5]) == pytest.approx(wall_one, abs=0.031)
    assert sum(parts[5:]) == pytest.approx(wall_serial, abs=0.031)
    assert all(p > 0 for p in parts[1:3] + parts[6:8]) and parts[4] >= 0 and parts[9] >= 0  # sampled and decoded


def test_bench_variations_in_bf16_judges_one_take_by_its_sound(capsys, monkeypatch):
    # bf16: a batch rounds otherwise than a lone job, so the samples differ far beyond 1e-3 (0.31 for
    # the embedded model at 25 steps); the take must still be the same by its log-mel distance
    from stepfoley.bench import bench_variations

    argv = ["bench", "variations", "--model", "tiny-random", "--device", "cpu", "--precision", "bf16",
            "--counts", "2", "--steps", "2", "--seconds", "1", "--threads", "1"]
    code = main(argv)
    out = capsys.readouterr().out
    assert ", bf16, 1 of " in out
    assert code == 0 and re.search(r"N=2: .*two seeds' takes: [\d.]+ dB\) \(the same take by log-mel distance\)",
                                   out), out
    monkeypatch.setattr(bench_variations, "SAME_TAKE_FRACTION", 0.0)  # no distance is under none: it fails
    assert main(argv) == 1
    assert "(NOT the same take by log-mel distance)" in capsys.readouterr().out


def test_bench_variations_fails_when_the_stems_differ(capsys, monkeypatch):
    # a bound no two takes meet: the comparison of a batch really runs
    from stepfoley.bench import bench_variations

    monkeypatch.setattr(bench_variations, "SAME_TAKE_FRACTION", 0.0)
    assert main(["bench", "variations", "--model", "tiny-random", "--device", "cpu", "--counts", "2",
                 "--steps", "1", "--seconds", "1", "--threads", "1", "--repeats", "1"]) == 1
    assert "NOT the same take" in capsys.readouterr().out


@pytest.mark.parametrize("argv, words", [
    (["sampler", "--preset", "bogus"], "bogus"),
    (["weights-load", "--repeat", "0"], "--repeat and --mb must be at least 1"),
    (["weights-load", "--dir", "/nonexistent-weights"], "is not a folder"),
    (["weights-load", "--codec", "16k"], "give it with --dir"),
    (["variations", "--steps", "0"], "--steps must be from 1 to 200"),
    (["variations", "--seconds", "0.5"], "--seconds must be from 1 to 600"),
    # nan failed every stem, blaming them
    (["variations", "--tolerance", "nan"], "--tolerance must be a number of 0 or more"),
    (["variations", "--repeats", "0"], "--repeats must be from 1 to 100"),
    (["sampler", "--repeats", "0"], "--repeats must be at least 1"),
    (["sampler", "--threads", "0"], "thread count"),
    (["sampler", "--compile"], "--compile runs on CUDA only"),  # the default device is the CPU
    (["sampler", "--device", "nope"], "Unknown device"),
    (["features", "--seconds", "-1"], "--seconds must be from 1 to 64"),
    (["features", "--seconds", "600"], "--seconds must be from 1 to 64"),  # in one piece: some 30 GB
    (["features", "--device", "nope"], "Unknown device"),
    (["features", "--threads", "0"], "thread count"),  # the README's figures are at 1 thread: it had no option
    (["bridge", "--pings", "0"], "--pings must be at least 1"),
    (["bridge", "--flood-pings", "0"], "--flood-pings must be at least 1"),
    (["bridge", "--port", "70000"], "--port must be from 1 to 65535"),
    (["bridge", "--steps", "201"], "--steps must be at most 200"),  # the engine would refuse every request
    (["variations", "--counts", "1,1"], "each once"),
    (["variations", "--counts", "1,two"], "give counts from 1 to 8"),  # "invalid _counts value": a function's name
    # memory filled until the kernel ended it; a traceback from the allocator; one from libx264
    (["weights-load", "--mb", "100000000"], "--mb 100000000: at most 8192"),
    (["sampler", "--batch", "100000000"], "--batch 100000000: at most 256"),
    (["features", "--picture", "17x17"], "each an even number from 16 to 8192"),
])
def test_a_benchmark_option_it_cannot_run_with_is_a_usage_error(capsys, argv, words):
    try:
        code = main(["bench", *argv])
    except SystemExit as e:  # the benchmark's own parser
        code = e.code
    assert code == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_memory_running_out_in_a_benchmark_is_said_in_words(capsys, monkeypatch):
    from stepfoley.bench import bench_sampler

    def allocate(argv):
        raise RuntimeError("[enforce fail at alloc_cpu.cpp:117] DefaultCPUAllocator: can't allocate memory: you "
                           "tried to allocate 1099511627776 bytes.")
    monkeypatch.setattr(bench_sampler, "main", allocate)
    assert main(["bench", "sampler"]) == 1
    err = capsys.readouterr().err
    assert "the computer's memory ran out; give smaller sizes" in err and "Traceback" not in err


def test_bench_bridge_says_when_no_engine_answers(capsys):
    import socket
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:  # a port nobody serves
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert main(["bench", "bridge", "--port", str(port), "--pings", "2"]) == 1
    err = capsys.readouterr().err
    assert "No StepFoley engine answered" in err and "Traceback" not in err


def test_peak_memory_is_read_in_each_systems_unit(monkeypatch):
    """getrusage's ru_maxrss is KiB on Linux and bytes on macOS; Windows has no `resource`
    module, and the benchmark must still import and run there."""
    import builtins
    import resource

    from stepfoley.bench import bench_sampler

    kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    assert bench_sampler.peak_resident_mib() == pytest.approx(kib / 1024, rel=0.05)
    monkeypatch.setattr(bench_sampler.sys, "platform", "darwin")
    assert bench_sampler.peak_resident_mib() == pytest.approx(kib / 2**20, rel=0.05)
    real_import = builtins.__import__

    def no_resource(name, *args, **kwargs):
        if name == "resource":
            raise ImportError("No module named 'resource'")
        return real_import(name, *args, **kwargs)

    monkeypatch.setattr(builtins, "__import__", no_resource)
    assert bench_sampler.peak_resident_mib() is None


def test_a_reader_that_leaves_early_is_no_error():
    """`stepfoley bench ... | head -1`: the figures' reader gone ended a benchmark in a
    BrokenPipeError traceback and exit 1 (helper 197). Here the pipe is closed before a line."""
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-m", "stepfoley", "bench", "weights-load", "--mb", "1", "--repeat", "1"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    proc.stdout.close()
    err = proc.stderr.read()
    assert proc.wait(timeout=300) == 0 and "Traceback" not in err, err
