"""Sampler speed on the full small_16k network (random weights), side by side in one run.

(a) our CFG sampling (both branches in one batched forward per step, sharing the audio input
    projection of x) vs an MMAudio-style loop (two separate forwards per step, conditions
    cached): ratio, target <= 0.85;
(b) our NAG step (three branches in one forward + a 4-block ControlNet) vs our CFG step:
    ratio, target <= 1.45;
(c) peak resident memory of the process (and on a GPU, the peak of its allocated memory).

Both sides run under torch.inference_mode (as MMAudio's `generate` does); measurements are
interleaved (A, B, A, B, ...) after a warm-up so that load from other processes hits both alike,
and the median is reported. `--precision bf16` runs both sides under bf16 autocast (MMAudio's own
default precision; fast on CPUs with native bf16). On a GPU every timing waits for the
device to finish (torch.cuda.synchronize), and `--compile` compiles the base network's per-step
path for both sides, what `stepfoley serve --compile` compiles (the warm-up pays for compiling).

    stepfoley bench sampler --steps 2 --repeats 5 --threads 1 [--precision bf16]
    stepfoley bench sampler --device cuda --steps 25 --repeats 5 [--precision bf16] [--compile]
"""
from __future__ import annotations

import argparse
import statistics
import sys
import time

import torch

from stepfoley.engine.controlnet import AudioControlNet
from stepfoley.engine.devices import autocast_context, check_threads, choose_device
from stepfoley.engine.guidance import BRANCHES, GUIDANCE_METHODS, GuidanceWeights, classifier_free_guidance
from stepfoley.engine.mmaudio import MMAudio, MMAudioConfig
from stepfoley.engine.sampler import branch_conditions, euler_sample, guided_velocity, initial_noise, time_grid


def mmaudio_style_velocity(net, conditions, empty, alpha):
    """MMAudio's ode_wrapper: two forwards of B rows each, conditions precomputed."""
    def velocity(t, x):
        tt = t.reshape(1).expand(x.shape[0])
        return classifier_free_guidance(net.predict_flow(x, tt, conditions),
                                        net.predict_flow(x, tt, empty), alpha)
    return velocity


def _repeat(x, groups: int):
    return torch.cat([x] * groups)


def _wait_for(device: torch.device) -> None:
    # a GPU runs kernels asynchronously: the clock means nothing until the queue is empty
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn, device: torch.device = torch.device("cpu")) -> float:
    _wait_for(device)
    start = time.perf_counter()
    fn()
    _wait_for(device)
    return time.perf_counter() - start


def interleaved_times(candidates: dict, repeats: int, device: torch.device = torch.device("cpu")) -> dict:
    """name -> list of seconds, measured A, B, C, A, B, C, ... after one warm-up call each."""
    for fn in candidates.values():  # warm-up: allocator, oneDNN primitive caches, rope tables, compilation
        fn()
    times = {name: [] for name in candidates}
    for _ in range(repeats):
        for name, fn in candidates.items():
            times[name].append(timed(fn, device))
    return times


def median_times(candidates: dict, repeats: int, device: torch.device = torch.device("cpu")) -> dict:
    return {k: statistics.median(v) for k, v in interleaved_times(candidates, repeats, device).items()}


# Far past what a job samples at once (8 variations; a GPU benchmark may ask for more): a typo
# of a few more digits failed in the allocator with a traceback.
MAX_BATCH = 256


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="stepfoley bench sampler", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--preset", default="small_16k")
    parser.add_argument("--steps", type=int, default=2, help="Euler steps per sample (25 in real use)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--batch", type=int, default=1, help="items per generation")
    parser.add_argument("--controlnet-depth", type=int, default=4)
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads; 1 by default because on a shared CPU a descheduled "
                             "worker thread stalls every parallel region and swamps the figures")
    parser.add_argument("--precision", choices=("fp32", "bf16"), default="fp32")
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda, cuda:N, mps or auto")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the networks (CUDA only, as in stepfoley serve --compile)")
    args = parser.parse_args(argv)
    for option in ("steps", "repeats", "batch", "controlnet_depth"):
        if getattr(args, option) < 1:
            parser.error(f"--{option.replace('_', '-')} must be at least 1")
    if args.batch > MAX_BATCH:
        parser.error(f"--batch {args.batch}: at most {MAX_BATCH} (items sampled at once)")
    device = choose_device(args.device)
    if args.compile and device.type != "cuda":
        parser.error("--compile runs on CUDA only (compiling on a CPU costs minutes for little gain)")
    torch.set_num_threads(check_threads(args.threads))

    torch.manual_seed(0)
    config = MMAudioConfig.preset(args.preset)
    net = MMAudio(config).eval()
    with torch.no_grad():
        net.latent_mean.zero_()
        net.latent_std.fill_(1.0)
    controlnet = AudioControlNet.from_base(net, depth=args.controlnet_depth).eval()
    net.to(device)
    controlnet.to(device)
    if args.compile:
        # what load_runtime_model compiles for `serve --compile`: the base network's per-step path
        net.predict_flow = torch.compile(net.predict_flow)
    B, N, C = args.batch, config.latent_seq_len, config.latent_dim
    print(f"network: {config.describe()}, {sum(p.numel() for p in net.parameters()) / 1e6:.1f} M parameters")
    print(f"ControlNet: depth {args.controlnet_depth}, "
          f"{sum(p.numel() for p in controlnet.parameters()) / 1e6:.1f} M parameters")
    where = (f"cuda ({torch.cuda.get_device_name(device)})" if device.type == "cuda"
             else f"{device.type}, {torch.get_num_threads()} threads")
    print(f"device: {where}, {args.precision}{', compiled' if args.compile else ''}, torch {torch.__version__}; "
          f"batch {B}, {args.steps} Euler steps per sample{'' if args.steps == 25 else ' (25 in real use)'}, "
          f"{args.repeats} repeats after warm-up, median")

    with torch.inference_mode(), autocast_context(device, args.precision):
        clip_f = torch.randn(1, config.clip_seq_len, config.clip_dim, device=device)
        sync_f = torch.randn(1, config.sync_seq_len, config.sync_dim, device=device)
        text_f = torch.randn(1, config.text_seq_len, config.text_dim, device=device)
        branches = branch_conditions(net, [b for b in BRANCHES if b != "negative"], clip_f, sync_f, text_f, N)
        conditions, empty = branches["cond"].expand(B), branches["uncond"].expand(B)
        audio_latent = torch.randn(B, N, C, device=device)
        x0 = initial_noise(list(range(B)), N, C, device=device)

        weights = GuidanceWeights(alpha=4.5, beta=1.5)
        ours_cfg = guided_velocity(net, GUIDANCE_METHODS["independent"], weights, branches)
        theirs_cfg = mmaudio_style_velocity(net, conditions, empty, 4.5)
        ours_nag = guided_velocity(net, GUIDANCE_METHODS["nag"], weights, branches, audio_latent=audio_latent,
                                   controlnet=controlnet)
        grid = time_grid(args.steps)
        sample = lambda velocity: (lambda: euler_sample(velocity, x0, grid))  # noqa: E731

        runs = interleaved_times({"ours_cfg": sample(ours_cfg), "mmaudio_cfg": sample(theirs_cfg),
                                  "ours_nag": sample(ours_nag)}, args.repeats, device)
        medians = {k: statistics.median(v) for k, v in runs.items()}
        minima = {k: min(v) for k, v in runs.items()}

        # Pieces, to explain the ratios. The base forwards share one input projection, as the
        # sampler's do; "3 rows / 2 rows" is what NAG / CFG would be with a ControlNet costing
        # nothing, i.e. a floor no NAG step that evaluates Eq. 9 exactly can go below.
        def shared_rows(groups: int):
            rows = _repeat(x0, groups)
            t_rows = torch.full((groups * B,), 0.5, device=device)
            batched = conditions.cat(*[conditions] * (groups - 1))
            return lambda: net.predict_flow(rows, t_rows, batched,
                                            latent_embedding=_repeat(net.embed_latent(x0), groups))
        t = torch.full((B,), 0.5, device=device)
        pieces = median_times({
            "base_forward_B_rows": lambda: net.predict_flow(x0, t, conditions),
            "audio_input_proj_B_rows": lambda: net.embed_latent(x0),
            "controlnet_B_rows": lambda: controlnet(x0, t, branches["audio"].expand(B), audio_latent, base=net),
            "shared_forward_2B_rows": shared_rows(2),
            "shared_forward_3B_rows": shared_rows(3),
        }, args.repeats, device)

    steps = args.steps
    cfg_step, ref_step, nag_step = (medians[k] / steps for k in ("ours_cfg", "mmaudio_cfg", "ours_nag"))
    print()
    print(f"(a) CFG step, one batched forward of {2 * B} rows: {cfg_step * 1e3:8.1f} ms")
    print(f"    CFG step, MMAudio-style 2 x {B} rows:        {ref_step * 1e3:8.1f} ms")
    print(f"    ratio ours / MMAudio-style = {cfg_step / ref_step:.3f}   (target <= 0.85)")
    print(f"(b) NAG step, one forward of {3 * B} rows + ControlNet: {nag_step * 1e3:8.1f} ms")
    print(f"    ratio NAG / CFG = {nag_step / cfg_step:.3f}   (target <= 1.45)")
    print(f"    (fastest runs instead of medians: (a) {minima['ours_cfg'] / minima['mmaudio_cfg']:.3f}, "
          f"(b) {minima['ours_nag'] / minima['ours_cfg']:.3f})")
    print("    pieces (ms): " + ", ".join(f"{k} {v * 1e3:.1f}" for k, v in pieces.items()))
    floor = pieces["shared_forward_3B_rows"] / pieces["shared_forward_2B_rows"]
    print(f"    floor for (b), NAG with a ControlNet that cost nothing: 3-row forward / 2-row "
          f"forward = {floor:.3f}")
    peak = peak_resident_mib()
    print("(c) peak resident memory: " + ("not measured on this system" if peak is None else f"{peak:.0f} MiB"))
    if device.type == "cuda":
        print(f"    peak GPU memory allocated: {torch.cuda.max_memory_allocated(device) / 2**20:.0f} MiB")
    sys.stdout.flush()


def peak_resident_mib() -> float | None:
    """This process's peak resident memory in MiB; None where the system cannot say (Windows
    has no `resource` module). getrusage counts KiB on Linux but bytes on macOS."""
    try:
        import resource
    except ImportError:
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / 2**20 if sys.platform == "darwin" else peak / 1024


if __name__ == "__main__":
    main()
