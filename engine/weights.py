"""The MMAudio weights directory: which official file is where, is it there, is it right.

Layout (docs/weights.md): the official file names under one root, e.g.

    weights/mmaudio_small_16k.pth        ext_weights/v1-16.pth     ext_weights/best_netG.pt
    ext_weights/synchformer_state_dict.pth                          controlnets/<name>.safetensors

Any .pth/.pt may have a `.safetensors` copy beside it (same stem, written by
`convert_weights_dir`); readers prefer the copy because it loads faster and cannot run code.
A copy of a file with an entry (best_netG.pt["generator"]) holds only that entry.

Key/shape lists of the official checkpoints ship in engine/manifests/<name>.json (packed
from the golden manifests by tools/pack_weight_manifests.py, in the format
engine.checkpoints.check_against_manifest reads), so checking works on an installed copy
without the shared fixture folder; `manifests_dir` points elsewhere if needed.
"""

from __future__ import annotations

import hashlib
import os
import re
import stat
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable

from stepfoley.atomic import sweep_stale_parts
from stepfoley.engine.errors import CheckpointError, InvalidInputError, is_out_of_memory

MANIFESTS_DIR = Path(__file__).resolve().parent / "manifests"


@dataclass(frozen=True)
class WeightFile:
    name: str  # also the manifest name
    relpath: str  # official location under the weights root
    what: str  # for people: what the file is and where it comes from
    entry: str | None = None  # the state dict is this entry of the file's top-level dict
    keep_prefix: str | None = None  # only keys with this prefix are loaded
    directory_file: str | None = None  # relpath is a folder; the checkpoint is this file inside it
    directory_extra: tuple[str, ...] = ()  # other files the folder must hold
    weight_norm: bool = False  # BigVGAN: weight-norm keys may use legacy or parametrization names
    md5: str | None = None  # of the official file, as MMAudio publishes it (its download list)

    def checkpoint_relpath(self) -> str:
        return f"{self.relpath}/{self.directory_file}" if self.directory_file else self.relpath


BIGVGAN_V2_DIR = "ext_weights/bigvgan_v2_44khz_128band_512x"
CLIP_NAME = "DFN5B-CLIP-ViT-H-14-384"
CLIP_DIR = f"ext_weights/{CLIP_NAME}"

FILES: dict[str, WeightFile] = {
    f.name: f
    for f in [
        WeightFile("flow_small_16k", "weights/mmaudio_small_16k.pth", "MMAudio small 16 kHz flow network",
                   md5="af93cde404179f58e3919ac085b8033b"),
        WeightFile("flow_small_44k", "weights/mmaudio_small_44k.pth", "MMAudio small 44.1 kHz flow network",
                   md5="babd74c884783d13701ea2820a5f5b6d"),
        WeightFile("flow_medium_44k", "weights/mmaudio_medium_44k.pth", "MMAudio medium 44.1 kHz flow network",
                   md5="5a56b6665e45a1e65ada534defa903d0"),
        WeightFile("flow_large_44k", "weights/mmaudio_large_44k.pth", "MMAudio large 44.1 kHz flow network",
                   md5="fed96c325a6785b85ce75ae1aafd2673"),
        WeightFile("flow_large_44k_v2", "weights/mmaudio_large_44k_v2.pth", "MMAudio large 44.1 kHz v2 flow network",
                   md5="01ad4464f049b2d7efdaa4c1a59b8dfe"),
        WeightFile("vae_16k", "ext_weights/v1-16.pth", "16 kHz mel VAE (audio <-> latent)",
                   md5="69f56803f59a549a1a507c93859fd4d7"),
        WeightFile("vae_44k", "ext_weights/v1-44.pth", "44.1 kHz mel VAE (audio <-> latent)",
                   md5="fab020275fa44c6589820ce025191600"),
        WeightFile(
            "bigvgan_16k", "ext_weights/best_netG.pt", "16 kHz BigVGAN vocoder (mel -> audio)", entry="generator", weight_norm=True,
            md5="eeaf372a38a9c31c362120aba2dde292",
        ),
        WeightFile(
            "bigvgan_v2_44k",
            BIGVGAN_V2_DIR,
            "44.1 kHz BigVGAN-v2 vocoder folder (nvidia/bigvgan_v2_44khz_128band_512x)",
            entry="generator",
            directory_file="bigvgan_generator.pt",
            directory_extra=("config.json",),
            weight_norm=True,
        ),
        WeightFile(
            "synchformer",
            "ext_weights/synchformer_state_dict.pth",
            "Synchformer video-sync feature extractor",
            keep_prefix="vfeat_extractor",
            md5="5b2f5594b0730f70e41e549b7c94390c",
        ),
    ]
}

# CLIP is read by open_clip from a folder; it has no manifest, only a presence check.
# The MD5s are those of MMAudio's own download list (mmaudio/utils/download_utils.py), which
# it checks after every download; BigVGAN-v2 and CLIP come from their authors' hubs, which
# publish none that MMAudio repeats, so `--hash` cannot judge them.

VARIANTS: dict[str, tuple[str, ...]] = {
    "small_16k": ("flow_small_16k", "vae_16k", "bigvgan_16k", "synchformer", "clip"),
    "small_44k": ("flow_small_44k", "vae_44k", "bigvgan_v2_44k", "synchformer", "clip"),
    "medium_44k": ("flow_medium_44k", "vae_44k", "bigvgan_v2_44k", "synchformer", "clip"),
    "large_44k": ("flow_large_44k", "vae_44k", "bigvgan_v2_44k", "synchformer", "clip"),
    "large_44k_v2": ("flow_large_44k_v2", "vae_44k", "bigvgan_v2_44k", "synchformer", "clip"),
}

CODEC_FILES = {"16k": ("vae_16k", "bigvgan_16k"), "44k": ("vae_44k", "bigvgan_v2_44k")}

CONTROLNET_DIR = "controlnets"


# ---------------------------------------------------------------------------------------
# reading


def safetensors_copy(path: Path) -> Path:
    return Path(path).with_suffix(".safetensors")


_FINGERPRINT_BYTES = 2**20  # read from each end of a file: a checkpoint's header and index


def _identity(path: Path) -> dict[str, str]:
    """What a copy records of the file it was made from: its size and a hash of its first and
    last MiB (a new download of the same file matches; another file does not, whatever its
    dates: copying a folder resets them)."""
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        digest.update(f.read(_FINGERPRINT_BYTES))
        f.seek(max(0, size - _FINGERPRINT_BYTES))
        digest.update(f.read(_FINGERPRINT_BYTES))
    return {"source_size": str(size), "source_fingerprint": digest.hexdigest()}


def stale_copy(path: Path) -> bool:
    """Whether the .safetensors copy of the official `path` was made from another file than
    the one there now (a new download of another .pth). A copy made before copies recorded
    their source is trusted, as it always was."""
    from safetensors import safe_open

    path, copy = Path(path), safetensors_copy(path)
    if not (copy.is_file() and path.is_file()):
        return False
    try:
        with safe_open(str(copy), "pt") as f:
            meta = f.metadata() or {}
    except Exception:  # unreadable: the loader says so, naming the file
        return False
    recorded = {k: meta.get(k) for k in ("source_size", "source_fingerprint")}
    if None in recorded.values():
        return False
    if recorded["source_size"] != str(path.stat().st_size):
        return True
    return recorded != _identity(path)


def _broken_link(path: Path) -> bool:
    return path.is_symlink() and not path.exists()


def file_to_read(path: Path) -> Path | None:
    """The file a loader should open for an official path: its .safetensors copy if there
    is one made from the file there now, else the file itself, else None."""
    path = Path(path)
    copy = safetensors_copy(path)
    if copy.is_file() and not stale_copy(path):
        return copy
    return path if path.is_file() else copy if copy.is_file() else None


def _take_entry(loaded: dict, entry: str | None, path: Path) -> dict:
    if entry is None:
        if not isinstance(loaded, dict):
            # torch.load gives back whatever was saved: a tensor, a list, a number ...
            raise CheckpointError(
                f"{path} loads, but holds a {type(loaded).__name__}, not a dictionary of tensors; it is not the "
                "expected checkpoint: download the official file again.")
        return loaded
    if not isinstance(loaded, dict) or entry not in loaded or not isinstance(loaded[entry], dict):
        found = sorted(map(str, loaded))[:5] if isinstance(loaded, dict) else type(loaded).__name__
        raise CheckpointError(
            f"{path} has no {entry!r} entry (it holds {found}); it is not the expected checkpoint: "
            "download the official file again."
        )
    return loaded[entry]


def read_state_dict(path: Path, entry: str | None = None) -> dict:
    """Tensors of an official checkpoint, or of its .safetensors copy (which holds the
    entry's tensors directly), on the CPU."""
    return read_weights(path, entry)[0]


def read_weights(path: Path, entry: str | None = None) -> tuple[dict, str]:
    """read_state_dict's tensors, and the file they were read from as a load error names it
    (described_source): the copy is chosen once."""
    from stepfoley.engine.checkpoints import load_state_dict_file

    path = Path(path)
    source = file_to_read(path)
    if source is None:
        raise CheckpointError(f"{path} is missing. See docs/weights.md for where each official file goes.")
    state = load_state_dict_file(source, entry=None if source.suffix == ".safetensors" else entry)
    return state, described_source(path, source)


def described_source(path: Path, source: Path) -> str:
    """`source`, the file a load of official `path` reads (file_to_read), as its errors name it:
    a .safetensors copy is said to be one while the official file is there too (a wrong copy is
    then fixed by removing it, not by downloading the official file again)."""
    path, source = Path(path), Path(source)
    if source.suffix == ".safetensors" and path.suffix != ".safetensors" and path.exists():
        return (f"{source} (the .safetensors copy read instead of {path.name}; if it is wrong, delete it and "
                "run `stepfoley weights convert`)")
    return str(source)


def tensor_shapes(path: Path, entry: str | None = None) -> dict[str, tuple[int, ...]]:
    """key -> shape without reading the tensors: the safetensors header, or a memory-mapped
    torch.load of a .pth, so checking a multi-GB file costs almost nothing."""
    import torch

    from stepfoley.engine.checkpoints import (check_only_tensors, check_pth_container, memory_error, reading_error,
                                              unreadable_error)

    path = Path(path)
    if path.suffix == ".safetensors":
        from safetensors import safe_open

        try:
            with safe_open(str(path), "pt") as f:
                return {k: tuple(f.get_slice(k).get_shape()) for k in f.keys()}
        except Exception as e:  # safetensors raises its own error types
            if is_out_of_memory(e):
                raise memory_error(path, e) from e
            raise reading_error(path) or CheckpointError(
                f"{path} is not a readable safetensors file (it ends early or its header is garbled); "
                "convert or download it again.") from e
    check_pth_container(path)
    try:
        try:
            loaded = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
        except RuntimeError:  # files saved in the legacy (non-zip) format cannot be mapped
            loaded = torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise unreadable_error(path) from None
    except Exception as e:
        from stepfoley.engine.checkpoints import torch_load_reason

        if is_out_of_memory(e):  # a legacy file, read whole
            raise memory_error(path, e) from e
        raise reading_error(path) or CheckpointError(
            f"{path} cannot be read as a PyTorch checkpoint ({torch_load_reason(e)}); download it again.") from e
    state = _take_entry(loaded, entry, path)
    check_only_tensors(state, path)  # as the loader will: a training checkpoint is refused now, not after the rest loaded
    return {k: tuple(v.shape) for k, v in state.items()}


def manifest_path(name: str, manifests_dir: Path | None = None) -> Path:
    # None alone means the packaged ones: "" (an unset shell variable) is refused by
    # _require_manifests, not taken silently for them
    return Path(MANIFESTS_DIR if manifests_dir is None else manifests_dir) / f"{name}.json"


# ---------------------------------------------------------------------------------------
# checking

_WN_DIRECTION = ".parametrizations.weight.original1"
_WN_MAGNITUDE = ".parametrizations.weight.original0"


def _compare_folded_weight_norm(shapes: dict[str, tuple], manifest_file: Path) -> list[str]:
    """A BigVGAN saved after weight norm was folded into plain `<m>.weight` (NVIDIA's loader
    accepts those): compare with the manifest read that way (direction shape, no magnitude)."""
    from stepfoley.engine.checkpoints import compare_keys, manifest_layout_error, read_manifest

    expected = {}
    try:
        for e in read_manifest(manifest_file)["state_dict"]:
            key = e["key"]
            if key.endswith(_WN_MAGNITUDE):
                continue
            if key.endswith(_WN_DIRECTION):
                key = key[: -len(_WN_DIRECTION)] + ".weight"
            expected[key] = tuple(e["shape"])
    except (AttributeError, KeyError, TypeError) as e:  # a user's --manifests file of another layout
        raise manifest_layout_error(manifest_file, e) from None
    return compare_keys(shapes, expected).problems(limit=3, expected_in="the official layout")


def compare_with_manifest(spec: WeightFile, shapes: dict[str, tuple], manifest_file: Path) -> list[str]:
    """Problems (sentences) between a file's key -> shape map and its manifest; [] if it fits."""
    from stepfoley.engine.checkpoints import check_against_manifest

    if spec.keep_prefix:
        shapes = {k: v for k, v in shapes.items() if k.startswith(spec.keep_prefix)}
    folded = spec.weight_norm and not any(k.endswith((".weight_v", _WN_DIRECTION)) for k in shapes)
    if folded:
        problems = _compare_folded_weight_norm(shapes, manifest_file)
    else:
        report = check_against_manifest(shapes, manifest_file)
        problems = [] if report.ok else [report.summary(limit=3)]
    if problems:
        problems.append(f"{NOT_OFFICIAL} {spec.what}: download {spec.checkpoint_relpath()} again")
    return problems


NOT_OFFICIAL = "this is not the official"


@dataclass(frozen=True)
class FileReport:
    name: str
    what: str
    path: Path  # the official location
    present: bool
    read_from: Path | None = None  # what a loader opens (the .safetensors copy if any)
    problems: tuple[str, ...] = ()
    verified: bool = False  # keys and shapes were compared with the manifest
    notes: tuple[str, ...] = ()  # worth knowing, not wrong (a stale copy the loader skips)
    md5_matches: bool = False  # the official file's MD5 was computed and is the published one

    @property
    def ok(self) -> bool:
        return self.present and not self.problems

    @property
    def missing(self) -> str:
        """"missing", and what stands in its place where something does (not_there_because)."""
        return "missing" + "".join(f": it {why}" for why in self.problems)


@dataclass(frozen=True)
class WeightsReport:
    root: Path
    files: dict[str, FileReport]
    controlnets: tuple[Path, ...] = ()
    variants: dict[str, tuple[str, ...]] = field(default_factory=lambda: dict(VARIANTS))
    misplaced: tuple[str, ...] = ()  # weight files no model reads, each with what to do (misplaced_files)

    def unusable(self, variant: str) -> list[str]:
        """Names of the files the variant needs that are missing or wrong, and of its NAG
        ControlNet where one is there but does not fit (none at all: the model runs without NAG)."""
        optional = [controlnet_name(variant)] if controlnet_name(variant) in self.files else []
        return [n for n in [*self.variants[variant], *optional] if not self.files[n].ok]

    def _needed(self, name: str) -> str:
        path = self.files[name].path.relative_to(self.root).as_posix()
        return f"{path} to fit it, or gone" if name.startswith("controlnet_") else path

    def ready(self, variant: str) -> bool:
        return not self.unusable(variant)

    def text(self) -> str:
        lines = [f"Weights folder: {self.root}"]
        for r in self.files.values():
            if not r.present:
                status = r.missing
            elif r.problems:
                status = "WRONG: " + "; ".join(r.problems)
            else:
                via = f" (reads {r.read_from.name})" if r.read_from and r.read_from.suffix == ".safetensors" else ""
                status = ("ok, keys and shapes match" if r.verified else "present") + via
                status += ", MD5 is the published one" if r.md5_matches else ""
                status += "".join(f"; note: {n}" for n in r.notes)
            lines.append(f"  {r.path.relative_to(self.root)}  [{r.what}]: {status}")
        lines.append(f"  {CONTROLNET_DIR}/: " + (", ".join(p.name for p in self.controlnets) or "no NAG ControlNet files"))
        lines += [f"  not read: {advice}" for advice in self.misplaced]
        lines.append("Models:")
        for variant in self.variants:
            bad = self.unusable(variant)
            lines.append(f"  {variant}: " + ("ready" if not bad else "needs " + ", ".join(self._needed(n) for n in bad)))
        return "\n".join(lines)


def clip_folder(root: Path) -> Path | None:
    """The CLIP folder the loader reads: beside weights/, else in ext_weights/; None if neither."""
    return next((f for f in (root / CLIP_NAME, root / CLIP_DIR) if f.is_dir()), None)


def not_there_because(path: Path, folder: bool) -> str | None:
    """Why something at an official `path` is not the file (or, with `folder`, the folder)
    expected, where something is there: "missing" alone sent users looking for a name that
    was there (a zip not unpacked under the folder's name, a link left dangling)."""
    if path.is_symlink() and not path.exists():
        return f"is a link to {os.readlink(path)}, which does not exist"
    if folder and path.exists() and not path.is_dir():
        return "is a file, where a folder is expected (a download to unpack?)"
    if not folder and path.is_dir():
        return "is a folder, where a file is expected"
    if not folder and path.exists() and not path.is_file():
        return "is a pipe or a device, where a file is expected"
    inside = next(p for p in path.parents if p.exists())
    if not inside.is_dir():
        return f"would be in {inside.name}/, which is a file, not a folder"
    return None


def _check_clip(root: Path, verify: bool = True) -> FileReport:
    # its open_clip_config.json is optional (the DFN5B sizes are the defaults)
    from stepfoley.engine.features.clip import WEIGHT_FILES

    what = "CLIP image/text encoder folder (apple/DFN5B-CLIP-ViT-H-14-384, open_clip format)"
    folder = clip_folder(root)
    if folder is None:  # of its two places, the one where something else stands, else the official one
        where, why = next(((f, why) for f in (root / CLIP_DIR, root / CLIP_NAME)
                           if (why := not_there_because(f, folder=True))), (root / CLIP_DIR, None))
        return FileReport("clip", what, where, present=False, problems=(why,) if why else ())
    weights = [folder / n for n in WEIGHT_FILES if (folder / n).is_file()]
    if not weights:
        return FileReport("clip", what, folder, present=True,
                          problems=(f"no weights file in the folder (expected one of {', '.join(WEIGHT_FILES)})",))
    problems = _clip_problems(weights[0]) if verify else ()
    return FileReport("clip", what, folder, present=True, read_from=weights[0], problems=problems, verified=verify)


def _clip_problems(path: Path) -> tuple[str, ...]:
    """The CLIP weights' names and shapes against the network their config builds (on the meta
    device: no memory), as a loader would find them."""
    import torch

    from stepfoley.engine.features.clip import IGNORED_KEYS, ClipConfig, ClipModel

    try:
        found = {k: v for k, v in tensor_shapes(path).items() if k not in IGNORED_KEYS}
        config = ClipConfig.in_folder(path.parent)
    except CheckpointError as error:
        return (str(error),)
    with torch.device("meta"):
        expected = {k: tuple(v.shape) for k, v in ClipModel(config).state_dict().items()}
    missing, unexpected = sorted(expected.keys() - found.keys()), sorted(found.keys() - expected.keys())
    wrong = sorted(k for k in expected.keys() & found.keys() if expected[k] != found[k])
    problems = []
    for label, keys in (("missing", missing), ("unexpected", unexpected), ("wrong shape", wrong)):
        if keys:
            problems.append(f"{len(keys)} {label}: {', '.join(keys[:3])}{', ...' if len(keys) > 3 else ''}")
    if problems:
        problems.append(f"{path.name} is not apple/DFN5B-CLIP-ViT-H-14-384 in open_clip's format; download it again")
    else:
        problems = _clip_misfits(config)
    return tuple(problems)


def _clip_misfits(config) -> list[str]:
    """What makes a CLIP that loads (its weights fit its own config) unusable for MMAudio's
    networks, which every official model shares: found by a job only after the region's
    features, minutes in on a CPU."""
    from stepfoley.engine.mmaudio import MMAudioConfig
    from stepfoley.engine.video import CLIP_SIZE

    net = MMAudioConfig.preset("small_16k")  # the CLIP and text sizes are the same in every model
    misfits = []
    if CLIP_SIZE // config.patch_size != config.grid:
        misfits.append(f"its image tower reads {config.image_size}-px frames, and MMAudio gives CLIP {CLIP_SIZE}-px "
                       "ones")
    if config.embed_dim != net.clip_dim:
        misfits.append(f"its image features are {config.embed_dim} wide, and MMAudio reads {net.clip_dim}")
    if (config.text_width, config.context_length) != (net.text_dim, net.text_seq_len):
        misfits.append(f"its text features are {config.context_length} x {config.text_width}, and MMAudio reads "
                       f"{net.text_seq_len} x {net.text_dim}")
    if misfits:
        misfits.append("it is another CLIP than apple/DFN5B-CLIP-ViT-H-14-384: put that one in the folder")
    return misfits


def file_md5(path: Path) -> str:
    """The MD5 of a file's bytes (the digest MMAudio publishes for its files)."""
    return file_digest(path, "md5")


def file_digest(path: str | Path, algorithm: str) -> str:
    """The hex digest of a file's bytes by a hashlib algorithm ("md5", "sha256"), read in 8 MiB
    pieces (a 4 GB checkpoint never in memory). CheckpointError naming the file where it cannot be
    read to its end (a disk or network share failing part way was a traceback); a PermissionError
    is left to `readable_weights`, which names the folder closed on the way."""
    digest = hashlib.new(algorithm, usedforsecurity=False)
    try:
        with open(path, "rb") as f:
            while piece := f.read(8 * 2**20):
                digest.update(piece)
    except PermissionError:
        raise
    except OSError as e:
        raise CheckpointError(f"{path} could not be read to its end ({e.strerror or e}): the disk or the network "
                              "share it is on failed while it was read; copy the file again, or check the "
                              "disk.") from None
    return digest.hexdigest()


def _md5_check(spec: WeightFile, checkpoint: Path) -> tuple[bool, tuple[str, ...], tuple[str, ...]]:
    """(matches, problems, notes) of the official file's MD5 against the published one."""
    if not checkpoint.is_file():  # only a .safetensors copy: the published MD5 is the .pth's
        return False, (), (f"only its .safetensors copy is here, and MMAudio publishes the MD5 of "
                           f"{checkpoint.name}, so its bytes were not compared",)
    try:
        found = file_md5(checkpoint)
    except CheckpointError as e:  # this file's problem: the others are still compared
        return False, (str(e),), ()
    other = next((f for f in FILES.values() if f.md5 == found and f is not spec), None)
    if other is not None:  # large_44k's file saved as large_44k_v2's, say: whole, under another name
        own = Path(other.relpath).name
        return False, (f"its bytes are the official {own}, the {other.what}, not {checkpoint.name}: give it its own "
                       f"name, {other.relpath}, and download {checkpoint.name}",), ()
    if found != spec.md5:
        return False, (f"its bytes are not the official file's (MD5 {found}, published {spec.md5}): a download "
                       "cut short or changed on the way; download it again",), ()
    return True, (), ()


def check_file(root: Path, spec: WeightFile, manifests_dir: Path | None = None, verify: bool = True,
               md5: bool = False) -> FileReport:
    """What is wrong with one official file (its keys and shapes with `verify`; its bytes
    against the published MD5 with `md5`, where one is published and nothing else is wrong)."""
    location = root / spec.relpath
    checkpoint = root / spec.checkpoint_relpath()
    source = file_to_read(checkpoint)
    folder_present = spec.directory_file is None or location.is_dir()
    if source is None:
        if spec.directory_file and folder_present:
            return FileReport(spec.name, spec.what, location, True, problems=(f"{spec.directory_file} is missing in the folder",))
        why = not_there_because(location, folder=spec.directory_file is not None)
        return FileReport(spec.name, spec.what, location, present=False, problems=(why,) if why else ())
    problems = [f"{extra} is missing in the folder" for extra in spec.directory_extra if not (location / extra).is_file()]
    verified = False
    manifest_file = manifest_path(spec.name, manifests_dir)
    if verify and manifest_file.is_file():
        try:
            shapes = tensor_shapes(source, None if source.suffix == ".safetensors" else spec.entry)
            wrong = compare_with_manifest(spec, shapes, manifest_file)
            verified = True
        except CheckpointError as e:
            wrong = [str(e)]
        if wrong and source != checkpoint:
            # a new download of the .pth changes nothing while the .safetensors is read instead:
            # the copy is what to delete, not the .pth to download again
            wrong = [p for p in wrong if not p.startswith(NOT_OFFICIAL)]
            wrong.append(f"the file read is {source.name}, which is read instead of {checkpoint.name}: delete it"
                         + (" (`stepfoley weights convert` makes it again from the .pth)" if checkpoint.is_file()
                            else ""))
        problems += wrong
    if verify and spec.name == "bigvgan_v2_44k" and (location / "config.json").is_file():
        from stepfoley.engine.codec.bigvgan_v2 import config_problems

        problems += config_problems(location)
    notes = ()
    copy = safetensors_copy(checkpoint)
    if source == checkpoint and copy.is_file():  # file_to_read passed over a stale copy
        notes = (f"{copy.name} was made from another {checkpoint.name}, so "
                 f"{checkpoint.name} is read instead; `stepfoley weights convert` makes the copy again",)
    elif source == checkpoint and _broken_link(copy):
        notes = (f"{copy.name} is a link to a file that is not there, so {checkpoint.name} is read instead; remove "
                 "the link (`stepfoley weights convert` then makes the copy)",)
    md5_matches = False
    if md5 and spec.md5 and not problems:  # a file already wrong is to be replaced, not hashed
        md5_matches, wrong, md5_notes = _md5_check(spec, checkpoint)
        problems += wrong
        notes += md5_notes
        if md5_matches and source != checkpoint:  # the copy is what loads, and no MD5 is published for it
            notes += (f"the MD5 is {checkpoint.name}'s; {source.name}, which is what loads, was not compared "
                      "(delete it and `stepfoley weights convert` makes it again from the checked file)",)
        elif wrong and source != checkpoint:
            # the copy tells a new file from its own by size and first and last MiB only: a new
            # download of the same size left the copy of the damaged bytes loading
            problems.append(f"{source.name}, made from a {checkpoint.name} and read instead of it, is what loads: "
                            "delete it too, and run `stepfoley weights convert` once the new file is there")
    return FileReport(spec.name, spec.what, location, True, source, tuple(problems), verified, notes, md5_matches)


def is_weights_file(path: str | Path) -> bool:
    """Whether --weights names a file (the embedded model's weights, which `stepfoley train
    embedded` writes) rather than a folder of MMAudio's."""
    try:
        return bool(str(path).strip()) and Path(path).expanduser().is_file()
    except (OSError, ValueError):
        return False


def check_no_variant(weights_file: str | Path, variant: str | None) -> None:
    """InvalidInputError for a --model given with the embedded model's weights file: one model."""
    if variant not in (None, "embedded"):
        raise InvalidInputError(f"{weights_file} is the embedded model's weights, one model: --model chooses among "
                                "MMAudio's variants in a weights folder. Leave --model out.")


def weights_folder(root: str | Path) -> Path:
    """The weights folder, resolved; CheckpointError for one that cannot be used."""
    if not str(root).strip():  # an unset shell variable: not the current folder, as Path("") is
        raise CheckpointError("The weights folder is empty: give the folder that holds weights/ and ext_weights/.")
    try:
        path = Path(root).expanduser().resolve()
        try:
            mode = path.stat().st_mode
        except (FileNotFoundError, NotADirectoryError):
            mode = None
    except PermissionError:  # a folder above it this user may not enter
        from stepfoley.engine.checkpoints import closed_folder_words

        raise CheckpointError(f"{root} cannot be opened: " + (closed_folder_words(Path(root).expanduser()) or
                              "permission denied; let your user read it and enter every folder above it.")) from None
    except (OSError, RuntimeError) as e:  # Python 3.11 raises RuntimeError for a symlink loop
        raise CheckpointError(f"The weights folder {root} cannot be opened ({e}).") from None
    if mode is None:
        raise CheckpointError(f"The weights folder {path} does not exist. Create it and put the files of "
                              "docs/weights.md in it.")
    if stat.S_ISREG(mode):
        raise CheckpointError(f"{path} is a file: give the folder that holds weights/ and ext_weights/.")
    if not stat.S_ISDIR(mode):
        raise CheckpointError(f"{path} is not a folder but a pipe or a device: give the folder that holds weights/ "
                              "and ext_weights/.")
    try:
        os.fsencode(path).decode("utf-8")
    except UnicodeDecodeError:
        # PyTorch's mapped loading and safetensors take paths as UTF-8 only: every intact file
        # there was reported damaged, with the advice to download it again
        shown = os.fsencode(path).decode("utf-8", "backslashreplace")
        raise CheckpointError(f"The weights folder {shown} has a name that is not UTF-8 text, which the weight "
                              "readers cannot open; rename it (or the folders above it) with plain letters.") from None
    return path


@contextmanager
def readable_weights(root: Path):
    """Turns a file or folder of the weights that this user may not read into a CheckpointError."""
    try:
        yield
    except PermissionError as e:
        denied = Path(e.filename) if e.filename else root
        # a folder on the way may be what is closed, and the file the error names not there at all
        on_the_way = [folder for folder in reversed(denied.parents) if folder == root or root in folder.parents]
        denied = next((folder for folder in on_the_way if not os.access(folder, os.R_OK | os.X_OK)), denied)
        raise CheckpointError(f"{denied} cannot be read (permission denied); let your user read "
                              f"everything in {root}.") from None


def _require_manifests(manifests_dir: Path | None) -> None:
    if manifests_dir is not None and not str(manifests_dir).strip():
        raise CheckpointError("The manifests folder is empty; give the folder of the weight manifests, or none for "
                              "the packaged ones.")
    if manifest_path("vae_16k", manifests_dir).is_file():
        return
    if manifests_dir is not None:  # the user's choice, not the installation's
        raise CheckpointError(f"{manifests_dir} holds no weight manifests (vae_16k.json, ...); give the folder "
                              "that does with --manifests, or leave it out for the packaged ones.")
    raise CheckpointError(f"The weight manifests are missing from {MANIFESTS_DIR}; reinstall StepFoley "
                          "or regenerate them with tools/pack_weight_manifests.py.")


def check_weights_dir(root: Path, manifests_dir: Path | None = None, verify: bool = True,
                      only: Iterable[str] | None = None, md5: bool = False) -> WeightsReport:
    """What is present in a weights folder, what each model variant still needs, and
    whether each present checkpoint has the official keys and shapes (of the files named in
    `only`, when given: the others are only looked for) and, with `md5`, the official bytes
    (every byte is read: about as long as copying the files)."""
    root = weights_folder(root)
    with readable_weights(root):
        return _check_weights_dir(root, manifests_dir, verify, None if only is None else set(only), md5)


def _check_weights_dir(root: Path, manifests_dir: Path | None, verify: bool, only: set[str] | None,
                       md5: bool = False) -> WeightsReport:
    if verify:
        _require_manifests(manifests_dir)

    def verifies(name: str) -> bool:
        return verify and (only is None or name in only)

    files = {name: check_file(root, spec, manifests_dir, verifies(name), md5 and verifies(name))
             for name, spec in FILES.items()}
    files["clip"] = _check_clip(root, verifies("clip"))
    controlnets = tuple(sorted((root / CONTROLNET_DIR).glob("*.safetensors"))) if (root / CONTROLNET_DIR).is_dir() else ()
    for variant in VARIANTS:
        path, name = controlnet_path(root, variant), controlnet_name(variant)
        if path.is_file():
            files[name] = _check_controlnet(name, variant, path, verifies(name))
        elif os.path.lexists(path) and (why := not_there_because(path, folder=False)):  # meant to be one
            files[name] = FileReport(name, f"NAG ControlNet for {variant}", path, present=False, problems=(why,))
    return WeightsReport(root, files, controlnets, misplaced=misplaced_files(root))


# A browser that finds the name taken saves "name (1).pth"; some save "name-1.pth" or "name_1.pth".
_BROWSER_COPY = re.compile(r"(?: \(\d+\)|[-_]\d)(?=\.[A-Za-z]+$)")
_WEIGHT_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin", ".safetensors")


def misplaced_files(root: Path) -> tuple[str, ...]:
    """Weight files in the folder, weights/ or ext_weights/ that no model reads, each with what
    to do: an official file under a browser's changed name or in the wrong folder, or a file of
    no model; and the folder itself, when it is weights/ or ext_weights/ and not the one above."""
    from stepfoley.engine.features.clip import WEIGHT_FILES as CLIP_WEIGHT_FILES

    official = {}
    for spec in FILES.values():
        relpath = spec.checkpoint_relpath()
        official[Path(relpath).name] = relpath
        official[safetensors_copy(Path(relpath)).name] = safetensors_copy(Path(relpath)).as_posix()
    # CLIP's folder where the loader finds it (beside weights/ or in ext_weights/), else where it goes
    clip_home = (clip_folder(root) or root / CLIP_DIR).relative_to(root).as_posix()
    official |= {name: f"{clip_home}/{name}" for name in CLIP_WEIGHT_FILES}
    advice = []
    for folder in (root, root / "weights", root / "ext_weights"):
        try:
            names = sorted(p.name for p in folder.iterdir() if p.suffix in _WEIGHT_SUFFIXES and p.is_file())
        except OSError:
            continue
        for name in names:
            relpath = (folder / name).relative_to(root).as_posix()
            if relpath in official.values() or name.startswith("."):
                continue
            wanted = official.get(_BROWSER_COPY.sub("", name))
            if wanted is None:
                advice.append(f"{relpath}: no model reads this file")
            elif (root / wanted).exists():  # a second download: moving it would replace the first
                advice.append(f"{relpath}: a second copy of {wanted}, which is there; remove it once that one checks out")
            else:
                advice.append(f"{relpath}: rename or move it to {wanted}")
    if root.name in ("weights", "ext_weights") and not any((root / d).is_dir() for d in ("weights", "ext_weights")):
        advice.append(f"this looks like the {root.name}/ folder itself: give the folder that holds it, {root.parent}")
    return tuple(advice)


def controlnet_name(variant: str) -> str:
    return f"controlnet_{variant}"


def controlnet_path(root: str | Path, variant: str) -> Path:
    """Where a weights folder holds `variant`'s NAG ControlNet (the loader reads it, training writes it)."""
    return Path(root) / CONTROLNET_DIR / f"{variant}.safetensors"


def _check_controlnet(name: str, variant: str, path: Path, verify: bool) -> FileReport:
    """A NAG ControlNet file: from its header, whether it was made for `variant`."""
    from stepfoley.engine.controlnet import read_controlnet_config
    from stepfoley.engine.mmaudio import MMAudioConfig

    problems = ()
    if verify:
        try:
            read_controlnet_config(path, MMAudioConfig.preset(variant))
        except CheckpointError as error:
            problems = (f"{error} Remove it to run {variant} without NAG",)
    return FileReport(name, f"NAG ControlNet for {variant}", path, present=True, read_from=path, problems=problems)


# ---------------------------------------------------------------------------------------
# converting


@dataclass(frozen=True)
class Conversion:
    source: Path
    target: Path
    written: bool
    note: str  # why skipped, or what was written
    refused: bool = False  # not the official file: no copy made


def _dropped_on_load(manifest_file: Path) -> set[str]:
    """The keys a manifest says the loader drops (buffers it computes again). CheckpointError naming
    it where it cannot say: compare_with_manifest read it already, but a weight-norm-folded
    vocoder's comparison reads its entries alone, and a user's manifest may change in between."""
    from stepfoley.engine.checkpoints import manifest_layout_error, read_manifest

    dropped = read_manifest(manifest_file).get("keys_dropped_or_ignored_on_load", [])
    if not isinstance(dropped, list) or not all(isinstance(key, str) for key in dropped):
        raise manifest_layout_error(manifest_file, TypeError("keys_dropped_or_ignored_on_load is not a list of keys"))
    return set(dropped)


def convert_file(source: Path, entry: str | None = None, spec: WeightFile | None = None,
                 manifests_dir: Path | None = None) -> Conversion:
    """Write `<stem>.safetensors` beside a .pth/.pt (atomic; it replaces only a copy made from
    another file, `stale_copy`). With `spec`, a file whose keys and shapes are not the
    official ones is refused: its copy would be read instead of the .pth from then on."""
    import torch

    from stepfoley.engine.checkpoints import load_state_dict_file, save_safetensors_atomic

    target = safetensors_copy(source)
    sweep_stale_parts(target.parent)  # what a killed convert left: a hidden copy as big as the checkpoint
    stale = stale_copy(source)
    if _broken_link(target):  # a copy made elsewhere, since moved: it would be said to have "appeared"
        return Conversion(source, target, False, f"not converted: {target.name} is a link to a file that is not "
                          f"there ({os.readlink(target)}); remove the link and convert again", refused=True)
    if target.exists() and not stale:
        return Conversion(source, target, False, f"{target.name} already exists; left as it is")
    manifest_file = manifest_path(spec.name, manifests_dir) if spec is not None else None
    dropped = set()
    try:
        if manifest_file is not None and manifest_file.is_file():
            problems = compare_with_manifest(spec, tensor_shapes(source, entry), manifest_file)
            if problems:
                return Conversion(source, target, False, "not converted: " + "; ".join(problems), refused=True)
            # only what the loader reads: a key it drops is checked for nothing, and a forged view
            # there (one value repeated over terabytes) would be written out whole
            dropped = _dropped_on_load(manifest_file)
        state_dict = load_state_dict_file(source, entry=entry)
    except CheckpointError as error:  # damaged or unreadable (or its manifest): the others are still converted
        return Conversion(source, target, False, f"not converted: {error}", refused=True)
    tensors = {k: v for k, v in state_dict.items() if isinstance(v, torch.Tensor) and k not in dropped
               and (spec is None or spec.keep_prefix is None or k.startswith(spec.keep_prefix))}
    origin = f"{source.name}[{entry!r}]" if entry else source.name
    try:
        save_safetensors_atomic(tensors, target, metadata={"converted_from": origin, **_identity(source)},
                                overwrite=stale)
    except CheckpointError as error:  # a folder not writable, a full disk: the other folders still convert
        return Conversion(source, target, False, f"not converted: {error}", refused=True)
    note = (("made again: the copy was from another file" if stale else "written")
            + f" ({len(tensors)} tensor{'' if len(tensors) == 1 else 's'})")
    return Conversion(source, target, True, note)


def convert_weights_dir(root: Path, log: Callable[[str], None] = print,
                        manifests_dir: Path | None = None) -> list[Conversion]:
    """Convert every official .pth/.pt present in the folder to a .safetensors copy (each
    checked against its manifest first: a wrong file gets no copy)."""
    root = weights_folder(root)
    _require_manifests(manifests_dir)  # without them nothing could be checked before it is copied
    with readable_weights(root):
        return _convert_weights_dir(root, log, manifests_dir)


def _convert_weights_dir(root: Path, log: Callable[[str], None], manifests_dir: Path | None) -> list[Conversion]:
    results = []
    for spec in FILES.values():
        source = root / spec.checkpoint_relpath()
        if not source.is_file():
            continue
        log(f"{source.relative_to(root)} ...")
        result = convert_file(source, spec.entry, spec, manifests_dir)
        log(f"  -> {result.target.name}: {result.note}")
        results.append(result)
    if not results:
        log("No official .pth/.pt files found to convert (see docs/weights.md for the layout).")
    return results
