"""Load time of weight files: .pth (torch.load) vs .safetensors, and the codec build.

    stepfoley bench weights-load                 # synthetic file, 64 MB
    stepfoley bench weights-load --mb 256
    stepfoley bench weights-load --dir ~/mmaudio-weights [--codec 16k]

With --dir it times every official file that has a .safetensors copy beside it (make them
with `stepfoley weights convert DIR`), and with --codec the whole MMAudioCodec.from_directory.
Each figure is the best of --repeat runs (the first run also pays for the disk cache).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path



def best_of(repeat: int, fn) -> float:
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return min(times)


def compare(pth: Path, copy: Path, entry: str | None, repeat: int) -> None:
    from stepfoley.engine.checkpoints import load_state_dict_file

    def touched(state: dict) -> None:
        # safetensors maps pages lazily: read every tensor once so both figures include the I/O.
        for t in state.values():
            t.sum()

    t_pth = best_of(repeat, lambda: touched(load_state_dict_file(pth, entry=entry)))
    t_st = best_of(repeat, lambda: touched(load_state_dict_file(copy)))
    size = pth.stat().st_size / 2**20
    print(f"{pth.name:34s} {size:9.1f} MB   .pth {t_pth:7.3f} s   .safetensors {t_st:7.3f} s   ratio {t_pth / t_st:5.1f}x")


# The largest synthetic checkpoint: twice the largest official file (large_44k_v2's flow
# network, about 4 GB); 10^8 MB filled the machine's memory until the kernel ended the run.
MAX_SYNTHETIC_MB = 8192


def synthetic(mb: int, repeat: int) -> None:
    import torch

    from stepfoley.engine.checkpoints import save_safetensors_atomic

    # Shaped like a conv-net checkpoint: many medium tensors.
    n = max(1, mb * 2**20 // (4 * 512 * 512 * 3))
    state = {f"blocks.{i}.conv.weight": torch.randn(512, 512, 3) for i in range(n)}
    with tempfile.TemporaryDirectory() as d:
        pth, copy = Path(d) / "synthetic.pth", Path(d) / "synthetic.safetensors"
        torch.save(state, pth)
        save_safetensors_atomic(state, copy)
        compare(pth, copy, None, repeat)


def real_dir(root: Path, repeat: int, codec_mode: str | None) -> None:
    from stepfoley.engine.weights import FILES, safetensors_copy

    found = 0
    for spec in FILES.values():
        pth = root / spec.checkpoint_relpath()
        copy = safetensors_copy(pth)
        found += pth.is_file()
        if pth.is_file() and copy.is_file():
            compare(pth, copy, spec.entry, repeat)
        elif pth.is_file():
            print(f"{pth.name:34s} no .safetensors copy (run `stepfoley weights convert {root}`)")
    if not found:  # said, not an empty table: the wrong folder given
        print(f"no official MMAudio .pth file in {root} (docs/weights.md says where each goes): nothing to time")
    if codec_mode:
        from stepfoley.engine.codec.mmaudio_codec import MMAudioCodec

        t = best_of(1, lambda: MMAudioCodec.from_directory(root, codec_mode))
        print(f"MMAudioCodec.from_directory({codec_mode}): {t:.2f} s")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="stepfoley bench weights-load", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=None)
    parser.add_argument("--codec", choices=["16k", "44k"], default=None)
    parser.add_argument("--mb", type=int, default=64)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    if args.repeat < 1 or args.mb < 1:
        parser.error("--repeat and --mb must be at least 1")
    if args.mb > MAX_SYNTHETIC_MB:
        parser.error(f"--mb {args.mb}: at most {MAX_SYNTHETIC_MB} (MB, held in memory while both files are written)")
    if args.codec and not args.dir:
        parser.error("--codec times the codec of a weights folder: give it with --dir")
    if args.dir and not args.dir.expanduser().is_dir():
        parser.error(f"--dir {args.dir} is not a folder")
    if args.dir:
        real_dir(args.dir.expanduser(), args.repeat, args.codec)
    else:
        synthetic(args.mb, args.repeat)
    return 0


if __name__ == "__main__":
    sys.exit(main())
