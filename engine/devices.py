"""Where the networks run and in which precision.

The only module outside the networks that imports torch for device decisions. Noise for
sampling is drawn on the CPU by the sampler (so a seed gives the same sound on any
machine); nothing here touches random state.
"""

from __future__ import annotations

import contextlib
import os
from typing import ContextManager

import torch

from stepfoley.engine.errors import InvalidInputError

PRECISIONS = ("auto", "bf16", "fp32")
DEVICE_HINT = "Use 'auto', 'cpu', 'cuda', 'cuda:N' (N = GPU index) or 'mps'."


def _mps_available() -> bool:
    backend = getattr(torch.backends, "mps", None)
    return bool(backend is not None and backend.is_available())


def choose_device(preference: str | None = None) -> torch.device:
    """The device to run on. None or 'auto' picks CUDA, then Apple MPS, then CPU.

    An explicit device is honored or refused (InvalidInputError), never silently replaced.
    """
    choice = (preference or "auto").strip().lower()
    if choice == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if _mps_available():
            return torch.device("mps")
        return torch.device("cpu")

    try:
        device = torch.device(choice)
    except (RuntimeError, ValueError) as error:
        raise InvalidInputError(f"Unknown device {preference!r}. {DEVICE_HINT}") from error

    if device.type == "cpu":
        return device
    if device.type == "cuda":
        if not torch.cuda.is_available():
            raise InvalidInputError(
                f"Device {preference!r} was requested but no CUDA GPU is usable here "
                "(no NVIDIA GPU, driver, or CUDA build of PyTorch). Use 'auto' or 'cpu'."
            )
        count = torch.cuda.device_count()
        if device.index is not None and device.index >= count:
            raise InvalidInputError(
                f"Device {preference!r} does not exist: this machine has {count} CUDA GPU(s), "
                f"numbered 0 to {count - 1}."
            )
        return device
    if device.type == "mps":
        if not _mps_available():
            raise InvalidInputError(
                f"Device {preference!r} was requested but Apple Metal (MPS) is not available "
                "here (it needs an Apple-silicon Mac and a recent PyTorch). Use 'auto' or 'cpu'."
            )
        return device
    raise InvalidInputError(f"Device type {device.type!r} is not supported. {DEVICE_HINT}")


def check_precision(precision: str) -> str:
    if precision not in PRECISIONS:
        raise InvalidInputError(f"Unknown precision {precision!r}; use one of {', '.join(PRECISIONS)}.")
    return precision


def autocast_context(device: torch.device | str, precision: str = "auto") -> ContextManager:
    """The mixed-precision context for running the networks on `device`.

    'auto' means bf16 autocast on CUDA GPUs that support it and full fp32 elsewhere: on a CPU,
    bf16 is only fast with native bf16 instructions (AVX512-BF16, AMX; about 1.6x faster than
    fp32 on this project's AVX512-BF16 test machine, much slower without them), and MPS support
    varies, so there it is the user's choice. 'bf16' asks for bf16 autocast on any device;
    'fp32' never autocasts.
    """
    device = torch.device(device)
    if resolve_precision(device, precision) == "fp32":
        return contextlib.nullcontext()
    return torch.autocast(device_type=device.type, dtype=torch.bfloat16)


def resolve_precision(device: torch.device | str, precision: str = "auto") -> str:
    """'bf16' or 'fp32': what `autocast_context(device, precision)` runs in (recorded with
    every track, since it changes the sound slightly)."""
    check_precision(precision)
    if precision == "auto":
        device = torch.device(device)
        return "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "fp32"
    return precision


def _module_device(module: torch.nn.Module) -> torch.device:
    for tensor in module.parameters():
        return tensor.device
    for tensor in module.buffers():
        return tensor.device
    return torch.device("cpu")


def maybe_compile(module: torch.nn.Module, device: torch.device | str | None = None):
    """torch.compile `module` when it lives on CUDA; otherwise return it as is.

    Compiling on CPU/MPS costs minutes of start-up for little gain, so it is skipped there.
    Note that a compiled module's state_dict keys gain an '_orig_mod.' prefix: save the
    original module's weights, not the compiled wrapper's.
    """
    target = torch.device(device) if device is not None else _module_device(module)
    if target.type != "cuda":
        return module
    return torch.compile(module)


_LIBC_TRIM = None  # glibc's malloc_trim, looked up once; False where there is none


def release_freed_memory() -> bool:
    """Hand the memory freed since the last call back to the system (glibc's malloc_trim). Why:
    a small tensor kept between jobs (a feature cache entry) sits among the large, short-lived
    buffers of frame decoding, and the allocator then keeps every freed page around it, so an
    engine grew by half a megabyte or more for each new region it saw, past its cache's bound
    (README, "Using it"). Returns True
    where it ran (Linux with glibc); elsewhere it does nothing."""
    global _LIBC_TRIM
    if _LIBC_TRIM is None:
        try:
            import ctypes

            _LIBC_TRIM = ctypes.CDLL("libc.so.6").malloc_trim
        except (OSError, AttributeError):  # not glibc (macOS, Windows, musl)
            _LIBC_TRIM = False
    if _LIBC_TRIM is False:
        return False
    _LIBC_TRIM(0)
    return True


# The x86 feature flags (Linux's /proc/cpuinfo) of the instructions that make bf16 fast on a CPU.
NATIVE_BF16_FLAGS = ("avx512_bf16", "amx_bf16")


def cpu_has_native_bf16(cpuinfo: str | os.PathLike = "/proc/cpuinfo") -> bool | None:
    """Whether this CPU computes bf16 natively (AVX512-BF16 or AMX): bf16 autocast is then
    faster than fp32, and without them much slower. None where it cannot be told (no
    /proc/cpuinfo: macOS, Windows; or no x86 flags line: an Arm CPU)."""
    try:
        with open(cpuinfo, encoding="utf-8", errors="replace") as f:
            for line in f:
                if line.startswith("flags"):
                    flags = set(line.partition(":")[2].split())
                    return any(flag in flags for flag in NATIVE_BF16_FLAGS)
    except OSError:
        return None
    return None


def usable_cores() -> int:
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return max(1, os.cpu_count() or 1)


# --threads goes up to this many threads per usable core: more only slows the networks down, and
# far more (100000) makes the OpenMP runtime run out of memory or crash.
THREADS_PER_CORE = 4


def check_threads(threads: int | None) -> int | None:
    """`threads` (None: the default) if it is 1 to THREADS_PER_CORE x the usable cores; else
    InvalidInputError saying what is allowed."""
    if threads is None:
        return None
    cores = usable_cores()
    if isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= THREADS_PER_CORE * cores:
        raise InvalidInputError(f"The thread count (--threads) must be 1 to {THREADS_PER_CORE * cores} "
                                f"({THREADS_PER_CORE} per core; this process may use {cores}), got {threads}.")
    return threads


def share_cpu(threads: int | None = None, nice: int = 0) -> dict:
    """Run beside a DAW: torch computes with `threads` threads (None: every usable core but one,
    at least one, so the DAW's audio thread always finds a free core; else as check_threads
    allows) and the process drops `nice` steps below its current priority (POSIX), or to below
    normal priority for any `nice` above 0 (Windows, which has no steps). Returns what now holds:
    {"threads", "nice" (the process's niceness, None where the OS has none), "priority" (in
    words: "niceness 10", "below normal priority"), "cores"}."""
    cores = usable_cores()
    threads = max(1, cores - 1) if check_threads(threads) is None else threads
    torch.set_num_threads(threads)
    niceness, priority = None, "unchanged priority"
    if _WINDOWS:
        # otherwise the class it was started in, which a low-priority parent passes on
        priority = "below normal priority" if nice > 0 and _windows_below_normal_priority() else "unchanged priority"
    elif hasattr(os, "nice"):
        try:
            niceness = os.nice(max(0, nice))
        except OSError:
            niceness = os.nice(0)
        priority = f"niceness {niceness}"
    return {"threads": threads, "nice": niceness, "priority": priority, "cores": cores}


_WINDOWS = os.name == "nt"
_BELOW_NORMAL_PRIORITY_CLASS = 0x4000


def _windows_below_normal_priority() -> bool:
    """Put this process in Windows' below-normal priority class; whether that took."""
    import ctypes
    from ctypes import wintypes

    kernel32 = ctypes.WinDLL("kernel32", use_last_error=True)
    # a HANDLE is pointer-sized: ctypes' default int would cut it to 32 bits on 64-bit Windows
    kernel32.GetCurrentProcess.restype = wintypes.HANDLE
    kernel32.SetPriorityClass.restype = wintypes.BOOL
    kernel32.SetPriorityClass.argtypes = (wintypes.HANDLE, wintypes.DWORD)
    return bool(kernel32.SetPriorityClass(kernel32.GetCurrentProcess(), _BELOW_NORMAL_PRIORITY_CLASS))
