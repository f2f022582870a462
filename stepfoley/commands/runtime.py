"""The options `generate`, `serve` and `demo` share: where and how the networks run, and (for
`generate` and `serve`) where the video features are kept; and the check of a JSON file a
command will write (`eval --json`, `generate --metadata`)."""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

# engine.devices.PRECISIONS and THREADS_PER_CORE, engine.features.cache.DEFAULT_MAX_DISK_GB and
# MAX_DISK_GB, repeated so that `--help` needs no torch import.
PRECISIONS = ("auto", "bf16", "fp32")
THREADS_PER_CORE = 4
FEATURE_CACHE_MAX_GB = 5.0
FEATURE_CACHE_LIMIT_GB = 100_000.0


def feature_cache_from_arguments(args: argparse.Namespace):
    """The engine.features.cache.FeatureCache the --feature-cache options ask for; raises
    InvalidInputError for a folder that cannot be used or a size that is not above 0."""
    from stepfoley.engine.features.cache import open_feature_cache

    return open_feature_cache(args.feature_cache, args.feature_cache_max_gb)


def check_runtime_arguments(args: argparse.Namespace) -> None:
    """--threads, --device and --weights (a folder, or the embedded model's weights file, when
    given), checked before anything loads or listens: a usage error (InvalidInputError) like any
    other bad option, not a failed load."""
    from stepfoley.engine.devices import check_threads, choose_device, cpu_has_native_bf16
    from stepfoley.engine.errors import CheckpointError, InvalidInputError
    from stepfoley.engine.weights import check_no_variant, is_weights_file, weights_folder

    check_threads(getattr(args, "threads", None))
    device = choose_device(args.device)
    if getattr(args, "weights", None) is not None:
        from stepfoley.engine.embedded.model import check_weights_file

        weights_file = is_weights_file(args.weights)
        missing = Path(str(args.weights)).expanduser()
        try:
            absent = missing.suffix.lower() == ".safetensors" and not missing.exists()
        except OSError:  # in a folder this user may not enter: weights_folder says so
            absent = False
        if absent:  # no folder to create (a broken link too)
            raise InvalidInputError(f"The weights file {missing} does not exist. Give the file that `stepfoley "
                                    "train embedded` wrote, or the folder that holds MMAudio's weights/ and "
                                    "ext_weights/.")
        try:
            if weights_file:
                check_weights_file(args.weights)
            else:
                weights_folder(args.weights)
        except CheckpointError as e:
            raise InvalidInputError(str(e)) from None
        if weights_file:
            check_no_variant(args.weights, getattr(args, "model", None))
    if getattr(args, "compile", False) and device.type != "cuda":
        # accepted, so that one command line serves every machine, but never silently
        print(f"note: --compile has no effect on {device.type}: the network is compiled on CUDA GPUs only",
              file=sys.stderr)
    if getattr(args, "precision", None) == "bf16" and device.type == "cpu" and cpu_has_native_bf16() is False:
        print("note: this CPU has no native bf16 (AVX512-BF16 or AMX); --precision bf16 is faster than fp32 "
              "only with it, and likely slower here", file=sys.stderr)


def add_feature_cache_arguments(p: argparse.ArgumentParser) -> None:
    from stepfoley.engine.user_dirs import default_feature_cache_dir

    p.add_argument("--feature-cache", default=None, metavar="DIR|off",
                   help="folder that keeps each region's picture features across runs (with MMAudio on a "
                        "CPU they take minutes); 'off' keeps them in memory only; an empty name is refused "
                        "(it is not the current folder); only the cache's own files there are ever removed "
                        f"(default: {default_feature_cache_dir()})")
    p.add_argument("--feature-cache-max-gb", type=float, default=None, metavar="GB",
                   help="largest size of that folder, above 0 and at most "
                        f"{FEATURE_CACHE_LIMIT_GB:.0f}; the least recently used features go first "
                        f"(default {FEATURE_CACHE_MAX_GB:g})")


def add_runtime_arguments(p: argparse.ArgumentParser, feature_cache: bool = True) -> None:
    """The device, precision, compile and thread options, and with `feature_cache` the feature
    cache's (a command whose picture is new every run keeps its features in memory only)."""
    if feature_cache:
        add_feature_cache_arguments(p)
    p.add_argument("--device", default="auto", help="auto (CUDA, then Apple MPS, then CPU), cpu, cuda, cuda:1, mps")
    p.add_argument("--precision", choices=PRECISIONS, default="auto",
                   help="auto: bf16 on CUDA GPUs, fp32 elsewhere; bf16 is also much faster on CPUs with "
                        "native bf16 (AVX512-BF16 or AMX) at a slight change of the sound")
    p.add_argument("--compile", action="store_true",
                   help="torch.compile the network (CUDA only; the first jobs of each batch size compile it "
                        "again, for more than a minute: for a long-running engine)")
    p.add_argument("--threads", type=int, default=None,
                   help="CPU threads for the networks, 1 to "
                        f"{THREADS_PER_CORE}x the cores this process may use (default: every core but one, so a "
                        "DAW running beside keeps a core for its audio)")


def check_input_file(path, option: str, what: str) -> None:
    """Refuse an input file option (None: not given) that names a folder or nothing, before the
    work starts, asking for `what`. Raises InvalidInputError."""
    import os

    from stepfoley.engine.errors import InvalidInputError

    if path is not None and not os.path.isfile(path):
        # /dev/null or a pipe is there: "not there" sent the user looking for a file they had named
        found = ("a folder" if os.path.isdir(path) else
                 "not a regular file (a device or a pipe)" if os.path.exists(path) else "not there")
        raise InvalidInputError(f"{option} {path} is {found}; give {what}.")


def say(text: str, stream=None) -> None:
    """print(text) to `stream` (stdout), as far as anyone reads it: a reader that has gone (a pipe
    into `head`) made a finished job's end a traceback and exit 1."""
    import sys

    stream = sys.stdout if stream is None else stream
    try:
        print(text, file=stream, flush=True)
    except (OSError, ValueError):
        reader_gone(stream)


def reader_gone(stream) -> None:
    """What is written to `stream` from now on goes nowhere: its reader has gone, and what is still
    buffered would fail again at exit, as "Exception ignored"."""
    import os

    try:
        os.dup2(os.open(os.devnull, os.O_WRONLY), stream.fileno())
    except (OSError, ValueError):
        pass


def same_file(a, b) -> bool:
    """Whether paths `a` and `b` name one file: the same file on disk where both exist (through
    links, and as a case-insensitive file system compares names), else the same path once
    resolved (one of them not written yet)."""
    import os

    try:
        return os.path.samefile(a, b)
    except (OSError, ValueError):
        pass
    try:
        return os.path.normcase(os.path.realpath(a)) == os.path.normcase(os.path.realpath(b))
    except (OSError, ValueError):
        return False


def in_an_installed_package(path) -> bool:
    """Whether `path` lies in a folder pip manages (site-packages, dist-packages): a file there
    belongs to the installation, which every user of that Python runs and a reinstall puts back
    (in a source checkout, the packaged weights are the project's own to retrain)."""
    import os
    from pathlib import Path

    return any(part in ("site-packages", "dist-packages") for part in Path(os.path.realpath(path)).parts)


def is_special_file(path) -> bool:
    """Whether `path` is there and is neither a regular file nor a link: a device or a pipe,
    which a file written "with --force" replaced (run as root, /dev/null was a file after)."""
    import os
    import stat

    try:
        mode = os.lstat(path).st_mode
    except (OSError, ValueError):
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISLNK(mode) or stat.S_ISDIR(mode))


def check_json_path(path, force: bool, option: str = "--json", example: str = "eval.json",
                    folder_made: bool = False) -> None:
    """Refuse a --json PATH (or another `option`'s file) that could not be written to, before
    minutes of work (and before --write changes a weights file): its folder must exist (or, with
    `folder_made`, be one the writer can make), be a folder and be writable, and PATH must not be
    a folder, nor an existing file unless `force`. Raises InvalidInputError."""
    import os
    from pathlib import Path

    from stepfoley.atomic import can_make_file_in, name_too_long, nearest_existing
    from stepfoley.engine.errors import InvalidInputError

    if not str(path).strip():
        raise InvalidInputError(f"{option} is empty; give the file to write to (e.g. {option} {example}).")
    if str(path).endswith(tuple(filter(None, (os.sep, os.altsep)))):  # Path() drops it: results/ became a file
        raise InvalidInputError(f"{option} {path} names a folder; give a file in it (e.g. {option} "
                                f"{os.path.join(str(path), example)}).")
    path = Path(path).absolute()
    # with folder_made the writer makes the folder, inside the nearest one there
    folder = nearest_existing(path.parent) if folder_made else path.parent
    if not folder.exists():
        raise InvalidInputError(f"The folder {folder} does not exist; create it or choose another {option} path.")
    if not folder.is_dir():
        raise InvalidInputError(f"{folder} is not a folder; choose another {option} path.")
    if not can_make_file_in(folder):
        raise InvalidInputError(f"The folder {folder} is not writable; choose another {option} path.")
    too_long = name_too_long(path)
    if too_long:
        raise InvalidInputError(f"{option}: {too_long}")
    if path.is_dir():
        raise InvalidInputError(f"{path} is a folder; give a file name for {option} (e.g. {path / example}).")
    if is_special_file(path):
        raise InvalidInputError(f"{path} is not a regular file (a device or a pipe), which {option} would replace "
                                "with a file; name a file to write.")
    if os.path.lexists(path) and not force:
        raise InvalidInputError(f"{path} already exists; choose another {option} path or add --force to replace it.")
