"""Where and how the networks run: the options `generate`, `serve` and `demo` share."""

from __future__ import annotations

import argparse

# engine.devices.PRECISIONS, repeated so that `--help` needs no torch import.
PRECISIONS = ("auto", "bf16", "fp32")


def add_runtime_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--device", default="auto", help="auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:1, mps")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: bf16 on CUDA GPUs, fp32 elsewhere; bf16 is also much faster on CPUs with "
                        "native bf16 (AVX512-BF16 or AMX) at a slight change of the sound")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the network (CUDA only; the first job takes longer)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for the networks (default: every core but one, so a DAW running beside "
                        "keeps a core for its audio)")
