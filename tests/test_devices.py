import sys

import pytest
import torch

from stepfoley.engine import devices
from stepfoley.engine.devices import autocast_context, choose_device, maybe_compile, resolve_precision
from stepfoley.engine.errors import InvalidInputError


@pytest.fixture
def cpu_only(monkeypatch):
    """A machine with neither CUDA nor MPS, whatever this one has."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(devices, "_mps_available", lambda: False)


@pytest.mark.parametrize("preference", [None, "auto", " AUTO "])
def test_auto_falls_back_to_cpu(cpu_only, preference):
    assert choose_device(preference) == torch.device("cpu")


def test_auto_prefers_cuda_then_mps(monkeypatch):
    monkeypatch.setattr(devices, "_mps_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert choose_device("auto") == torch.device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert choose_device("auto") == torch.device("mps")


def test_cpu_is_always_honored():
    assert choose_device("cpu") == torch.device("cpu")
    assert choose_device("CPU") == torch.device("cpu")


@pytest.mark.parametrize("preference", ["cuda", "cuda:1"])
def test_unavailable_cuda_is_refused(cpu_only, preference):
    with pytest.raises(InvalidInputError, match="no CUDA GPU"):
        choose_device(preference)


def test_unavailable_mps_is_refused(cpu_only):
    with pytest.raises(InvalidInputError, match="MPS"):
        choose_device("mps")


def test_cuda_index_beyond_the_gpus_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert choose_device("cuda:1") == torch.device("cuda", 1)
    with pytest.raises(InvalidInputError, match="has 2 CUDA GPU"):
        choose_device("cuda:2")


@pytest.mark.parametrize("preference", ["gpu", "cuda:x", "meta"])
def test_unknown_devices_are_refused(preference):
    with pytest.raises(InvalidInputError, match="cuda:N"):
        choose_device(preference)


def test_autocast_auto_on_cpu_keeps_fp32():
    layer = torch.nn.Linear(4, 4)
    with autocast_context(torch.device("cpu"), "auto"):
        assert layer(torch.ones(1, 4)).dtype == torch.float32
    with autocast_context("cpu", "fp32"):
        assert layer(torch.ones(1, 4)).dtype == torch.float32


def test_autocast_bf16_on_cpu_when_asked():
    layer = torch.nn.Linear(4, 4)
    with autocast_context("cpu", "bf16"):
        assert layer(torch.ones(1, 4)).dtype == torch.bfloat16
    assert layer(torch.ones(1, 4)).dtype == torch.float32


def test_resolved_precision_is_what_autocast_runs(monkeypatch):
    assert resolve_precision("cpu", "auto") == "fp32"
    assert resolve_precision("cpu", "bf16") == "bf16"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: True)
    assert resolve_precision("cuda", "auto") == "bf16"
    assert resolve_precision("cuda", "fp32") == "fp32"
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda: False)
    assert resolve_precision("cuda", "auto") == "fp32"


def test_unknown_precision_is_refused():
    with pytest.raises(InvalidInputError, match="precision"):
        autocast_context("cpu", "fp8")


def test_compile_is_skipped_off_cuda():
    layer = torch.nn.Linear(2, 2)
    assert maybe_compile(layer) is layer
    assert maybe_compile(layer, device="cpu") is layer


def test_maybe_compile_compiles_what_lives_on_cuda(monkeypatch):
    """The CUDA branch without a GPU: maybe_compile decides by the device alone, so a recorder in
    place of torch.compile shows it is asked exactly when the module is to run on CUDA."""
    compiled = []
    monkeypatch.setattr(torch, "compile", lambda module: compiled.append(module) or "compiled")
    layer = torch.nn.Linear(2, 2)
    assert maybe_compile(layer, device="cuda") == "compiled"
    assert maybe_compile(layer, device="cpu") is layer
    assert compiled == [layer]


def test_thread_counts_beyond_four_per_core_are_refused_before_torch_sees_them(monkeypatch, capsys):
    """--threads 100000 made libgomp run out of memory or crash: 1 to 4 per usable core only."""
    from stepfoley.cli import main

    monkeypatch.setattr(devices, "usable_cores", lambda: 2)
    assert devices.check_threads(None) is None
    assert devices.check_threads(1) == 1 and devices.check_threads(8) == 8
    before = torch.get_num_threads()
    for threads in (9, 100_000, 0, -1):
        with pytest.raises(InvalidInputError, match=r"\(--threads\) must be 1 to 8 \(4 per core; this process may use 2\)"):
            devices.share_cpu(threads)
    assert torch.get_num_threads() == before
    assert main(["serve", "--port", "0", "--threads", "100000"]) == 2  # before it loads anything
    assert "must be 1 to 8" in capsys.readouterr().err


def velocities(foley):
    """The network's velocity for one fixed input, through `foley.net.predict_flow` as the
    sampler calls it (compiled when --compile took effect) and through the uncompiled method."""
    net, cfg, device = foley.net, foley.net.config, foley.device
    g = torch.Generator().manual_seed(0)

    def noise(*shape):
        return torch.randn(*shape, generator=g).to(device)

    cond = net.preprocess_conditions(noise(1, cfg.clip_seq_len, cfg.clip_dim), noise(1, cfg.sync_seq_len, cfg.sync_dim),
                                     noise(1, cfg.text_seq_len, cfg.text_dim))
    latent, t = noise(1, cfg.latent_seq_len, cfg.latent_dim), torch.full((1,), 0.3, device=device)
    with torch.no_grad():
        return foley.net.predict_flow(latent, t, cond), type(net).predict_flow(net, latent, t, cond)


def test_compile_on_the_cpu_runs_the_model_uncompiled():
    """`--compile` is CUDA only (compiling on a CPU costs minutes for little gain): the real
    option path, load_runtime_model(compile=True), leaves the network's own predict_flow."""
    from stepfoley.engine.service import load_runtime_model

    foley = load_runtime_model(model="tiny-random", device="cpu", compile=True)
    assert getattr(foley.net.predict_flow, "__func__", None) is type(foley.net).predict_flow  # no compiled wrapper


@pytest.mark.parametrize("compile_asked", [True, False])
def test_compile_off_cuda_is_said_not_silently_skipped(capsys, compile_asked):
    from argparse import Namespace

    from stepfoley.commands.runtime import check_runtime_arguments

    check_runtime_arguments(Namespace(threads=None, device="cpu", weights=None, compile=compile_asked))
    err = capsys.readouterr().err
    assert ("--compile has no effect on cpu" in err) is compile_asked


@pytest.mark.parametrize("text, native", [
    ("processor\t: 0\nflags\t\t: fpu sse2 avx512f avx512_bf16 amx_tile\n", True),
    ("flags\t\t: fpu sse2 avx2 amx_bf16\n", True),
    ("flags\t\t: fpu sse2 avx2 avx512f\n", False),
    ("processor\t: 0\nFeatures\t: fp asimd bf16\n", None),  # an Arm CPU: no x86 flags to read
])
def test_native_bf16_is_read_from_the_cpus_flags(tmp_path, text, native):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text(text)
    assert devices.cpu_has_native_bf16(cpuinfo) is native
    assert devices.cpu_has_native_bf16(tmp_path / "absent") is None  # macOS, Windows


@pytest.mark.parametrize("native, said", [(False, True), (True, False), (None, False)])
def test_bf16_on_a_cpu_without_native_bf16_is_said(capsys, monkeypatch, native, said):
    from argparse import Namespace

    from stepfoley.commands.runtime import check_runtime_arguments

    monkeypatch.setattr(devices, "cpu_has_native_bf16", lambda: native)
    check_runtime_arguments(Namespace(threads=None, device="cpu", weights=None, compile=False, precision="bf16"))
    assert ("no native bf16" in capsys.readouterr().err) is said


@pytest.mark.skipif(not torch.cuda.is_available(),
                    reason="--compile compiles only on CUDA (engine.devices.maybe_compile); this machine has no CUDA GPU")
def test_compile_runs_the_real_model_on_a_gpu(monkeypatch):
    """`stepfoley serve --compile` on a GPU: load_runtime_model(compile=True) puts torch.compile's
    wrapper in place of the network's predict_flow, and the compiled network computes the same
    velocity as the plain one. Both sides run in true fp32: PyTorch runs fp32 convolutions in
    TF32 on a GPU by default (10-bit mantissa), where eager and compiled code may pick other
    kernels and differ by far more than this tolerance. (On an H200 on 2026-12-04 the test
    failed with TF32 left on; its message was not kept, so that this was the cause is a guess
    not yet checked there. On this CPU the compiled velocity is within 3.1e-6 of the plain one.)"""
    from stepfoley.engine.service import load_runtime_model

    monkeypatch.setattr(torch.backends.cudnn, "allow_tf32", False)
    monkeypatch.setattr(torch.backends.cuda.matmul, "allow_tf32", False)

    device = choose_device("auto")
    assert device.type == "cuda"
    layer = torch.nn.Linear(8, 8).to(device)
    with autocast_context(device):
        expected = torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float32
        assert layer(torch.ones(1, 8, device=device)).dtype == expected
    foley = load_runtime_model(model="tiny-random", device="cuda", precision="fp32", compile=True)
    assert getattr(foley.net.predict_flow, "__func__", None) is not type(foley.net).predict_flow  # compiled
    compiled, plain = velocities(foley)
    torch.testing.assert_close(compiled, plain, rtol=1e-3, atol=1e-4)


def test_command_line_offers_exactly_the_engine_precisions():
    from stepfoley.commands.runtime import PRECISIONS

    assert PRECISIONS == devices.PRECISIONS


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="malloc_trim is glibc's")
def test_freed_memory_goes_back_to_the_system_after_a_job(monkeypatch):
    """The service trims after every job, failed or not (a long-running engine grew with each
    new region otherwise; README, "Using it", for the figures)."""
    from stepfoley.engine import devices, service

    assert devices.release_freed_memory() is True
    calls = []
    monkeypatch.setattr(service, "release_freed_memory", lambda: calls.append(1))
    runner = service.FoleyService.__new__(service.FoleyService)
    monkeypatch.setattr(service.FoleyService, "_generate", lambda self, *args: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        runner(None)
    assert calls == [1]



def test_on_windows_the_engine_runs_below_normal_priority(monkeypatch):
    """Windows has no niceness (os.nice is Unix only): --nice above 0 puts the process in the
    below-normal priority class through kernel32 (a stand-in here, answering as Microsoft
    documents), so the DAW still wins every contest for a core."""
    import ctypes
    from ctypes import wintypes
    from types import SimpleNamespace

    from conftest import Kernel32Entry

    calls = []
    kernel = SimpleNamespace(GetCurrentProcess=Kernel32Entry(lambda: -1),  # the pseudo-handle Windows returns
                             SetPriorityClass=Kernel32Entry(lambda handle, cls: calls.append((handle, cls)) or 1))
    monkeypatch.setattr(devices, "_WINDOWS", True)
    monkeypatch.setattr(ctypes, "WinDLL", lambda name, use_last_error: kernel, raising=False)
    before = torch.get_num_threads()
    try:
        cpu = devices.share_cpu(1, nice=10)
        assert calls == [(-1, 0x4000)] and cpu["nice"] is None and cpu["priority"] == "below normal priority"
        assert devices.share_cpu(1, nice=0)["priority"] == "unchanged priority" and len(calls) == 1
        assert kernel.GetCurrentProcess.restype is wintypes.HANDLE
        assert kernel.SetPriorityClass.argtypes == (wintypes.HANDLE, wintypes.DWORD)
    finally:
        torch.set_num_threads(before)
