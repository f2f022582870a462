"""Reading and writing weight files, and checking them against the golden key/shape manifests;
reading the small networks' files that carry their training report (load_with_report).

Loaders of specific models decide how to unwrap a file (BigVGAN's `best_netG.pt` keeps its weights
under "generator": `load_state_dict_file(path, entry="generator")`); this module never guesses.
"""

from __future__ import annotations

import json
import os
import re
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence, TypeVar, Union

import torch

from stepfoley.atomic import write_atomically
from stepfoley.engine.errors import CheckpointError, OutOfMemory, StepFoleyError, is_out_of_memory

PTH_SUFFIXES = (".pth", ".pt", ".ckpt", ".bin")
SAFETENSORS_SUFFIX = ".safetensors"

# The safetensors metadata key under which a small network's file keeps its JSON training report.
REPORT_KEY = "stepfoley"

ShapeLike = Union[torch.Tensor, torch.Size, Sequence[int]]
Config = TypeVar("Config")
Module = TypeVar("Module", bound=torch.nn.Module)


def load_state_dict_file(path: Union[str, os.PathLike], entry: Optional[str] = None) -> dict[str, torch.Tensor]:
    """name -> CPU tensor from a .pth/.pt/.ckpt (torch.load, weights only) or .safetensors file.

    `entry` selects one top-level item of a .pth file that nests its state dict.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"Weights file not found: {path}. Check the path or download the weights again.")
    if path.suffix == SAFETENSORS_SUFFIX:
        state = _read_safetensors(path)
    elif path.suffix in PTH_SUFFIXES:
        state = _read_pth(path)
    else:
        raise CheckpointError(
            f"Cannot read weights file {path}: unknown file type '{path.suffix}' "
            f"(expected {SAFETENSORS_SUFFIX} or one of {', '.join(PTH_SUFFIXES)}).")
    if entry is not None:
        if not isinstance(state, Mapping) or entry not in state:
            found = ", ".join(sorted(map(str, state))[:8]) if isinstance(state, Mapping) else type(state).__name__
            raise CheckpointError(f"Weights file {path} has no '{entry}' entry (it holds: {found}).")
        state = state[entry]
    return _as_state_dict(state, path)


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except Exception as exc:  # safetensors raises its own error types for truncated or garbled files
        if is_out_of_memory(exc):
            raise memory_error(path, exc) from exc
        raise reading_error(path) or CheckpointError(  # the library's words are chained for a log
            f"Weights file {path} is damaged or not a safetensors file (it ends early or its header is garbled). "
            f"Download or export it again.") from exc


# A repository cloned without Git LFS holds, in place of each large file, a ~130-byte text file
# that starts with this line.
GIT_LFS_POINTER = b"version https://git-lfs"


def reading_error(path: Union[str, os.PathLike]) -> CheckpointError | None:
    """The error for a weights file a reader refused, where what stops it is not its contents:
    one this user may not read (safetensors calls that "No such file or directory"), or a Git LFS
    pointer, not the weights; else None. Found by opening the file: called once a reader failed."""
    try:
        with open(path, "rb") as f:
            if f.read(len(GIT_LFS_POINTER)) != GIT_LFS_POINTER:
                return None
    except PermissionError:
        return unreadable_error(Path(path))
    except OSError:
        return None
    return CheckpointError(f"Weights file {path} is a Git LFS pointer, a small text file standing for the "
                           "weights, not the weights themselves: the repository was cloned without Git LFS. "
                           "Run `git lfs pull` in the repository, or download the file itself.")


def unreadable_error(path: Path) -> CheckpointError:
    """A weights file the user may not read: said so, not called damaged (downloading it again
    would not help). Where a folder above it may not be entered, that folder is what to open:
    chmod on the file could not even reach it."""
    closed = closed_folder_words(path)
    if closed is not None:
        return CheckpointError(f"Weights file {path} cannot be read: {closed}")
    return CheckpointError(f"Weights file {path} cannot be read (permission denied); let your user read it "
                           f"(e.g. chmod a+r '{path}').")


def closed_folder_words(path: Path) -> str | None:
    """What to do about the highest folder above `path` this user may not enter, or None where
    there is none. Found by looking each path up from the root down: a lookup refused names its
    parent as the closed folder. Links are followed first, as far as they can be: a path reached
    through one (~/weights -> /data/closed/weights) named the link's folder, which is open."""
    path = Path(os.path.realpath(path))  # stops, unresolved, at the folder it cannot enter
    for step in (*reversed(path.parents), path):
        try:
            os.stat(step)
        except PermissionError:
            return (f"your user may not enter the folder {step.parent} (permission denied); let your user "
                    f"enter it (e.g. chmod a+rx '{step.parent}').")
        except OSError:
            return None
    return None


def memory_error(path: Path, error: BaseException) -> StepFoleyError:
    """A weights file that did not fit in memory: said so, not called damaged (downloading
    gigabytes again would not help). Unless the allocation that failed (torch's allocator says
    its size) was larger than the whole file: every tensor's bytes are in the file, so a file
    asking for more declares tensors it does not hold, and is damaged."""
    try:
        file_size = path.stat().st_size
    except OSError:
        file_size = None
    asked = re.search(r"tried to allocate (\d+) bytes", f"{error} {error.__cause__}")
    if asked is not None and file_size is not None and int(asked.group(1)) > file_size:
        return CheckpointError(f"Weights file {path} is damaged: it declares {int(asked.group(1)) / 1e9:,.1f} GB of "
                               f"weights in a file of {file_size:,} bytes. Download it again.")
    size = f" ({file_size / 1e9:.1f} GB)" if file_size is not None else ""
    return OutOfMemory(f"There is not enough memory to load the weights file {path}{size}. Close other programs, "
                       "or choose a smaller model, and try again.")


def check_pth_container(path: Path) -> None:
    """CheckpointError for a PyTorch file whose zip records are compressed: torch.save never
    compresses them, torch.load takes them, and mapped or not every one is unpacked whole
    (an 8 MB file asked for 8.6 GB before a single shape was looked at)."""
    import zipfile

    try:
        if not zipfile.is_zipfile(path):
            return  # the legacy format, or no PyTorch file at all: torch.load says
        with zipfile.ZipFile(path) as archive:
            packed = [info.filename for info in archive.infolist() if info.compress_type != zipfile.ZIP_STORED]
    except (OSError, zipfile.BadZipFile, ValueError):
        return  # torch.load says what is wrong with it
    if packed:
        raise CheckpointError(f"Weights file {path} holds compressed parts ({packed[0]}), which PyTorch never "
                              "writes: it is not a weights file as published. Download it again.")


def torch_load_reason(exc: BaseException) -> str:
    """Why torch.load(weights_only=True) refused a file, in words for a user: never torch's advice
    to load the file unsafely, nor the names of its internals (the error is chained for a log)."""
    if str(exc).startswith("Weights only load failed"):
        return ("not a plain weights file: damaged, or holding objects only running its code could rebuild, "
                "which StepFoley never does")
    return "it ends early or its contents are garbled"


def _read_pth(path: Path):
    check_pth_container(path)
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except PermissionError:
        raise unreadable_error(path) from None
    except Exception as exc:  # zip, pickle and EOF errors all mean the same thing to the user
        if is_out_of_memory(exc):
            raise memory_error(path, exc) from exc
        raise reading_error(path) or CheckpointError(
            f"Weights file {path} is damaged, incomplete, or not a PyTorch weights file "
            f"({torch_load_reason(exc)}). Download it again.") from exc


def _as_state_dict(state, path: Path) -> dict[str, torch.Tensor]:
    check_only_tensors(state, path)
    return dict(state)


NOT_NUMBERS_ADVICE = "The training that wrote it went wrong, or the file is damaged: download or train it again."


def check_finite(state: Mapping[str, torch.Tensor], path: Union[str, os.PathLike],
                 advice: str = NOT_NUMBERS_ADVICE) -> None:
    """CheckpointError if a real-valued tensor that a network is to load from the file at `path`
    holds a NaN or an infinity: a training that diverged wrote it, or the file was damaged, and
    every job would fail on it. (Only what a loader keeps: a file may hold a mask of -inf that
    its loader drops.)"""
    found = [key for key, value in state.items() if value.is_floating_point() and not _all_finite(value)]
    if found:
        listed = ", ".join(found[:6]) + (f", ... ({len(found) - 6} more)" if len(found) > 6 else "")
        raise CheckpointError(f"Weights file {path}: {len(found)} tensor{'s hold' if len(found) != 1 else ' holds'} "
                              f"values that are not numbers (NaN or infinite), which no working network has "
                              f"({listed}). {advice}")


def _all_finite(value: torch.Tensor) -> bool:
    """Whether every element `value` reads is finite, in time bounded by the memory it reads, not
    by its shape: a view may repeat its storage (a stride-0 view, or strides that overlap) over far
    more elements than the file holds. (Overlapping strides are judged by the whole stretch of
    storage they read from, elements between theirs too: no saved network has such a view.) The sum (a twentieth of isfinite's cost for float32 on a
    CPU) is not finite whenever an element is not; only then are the elements looked at, since
    large finite weights can overflow it."""
    if value.numel() == 0:
        return True
    # a stride-0 view (torch's expand) repeats its elements: one of each suffices
    value = value[tuple(slice(0, 1) if stride == 0 else slice(None) for stride in value.stride())]
    span = 1 + sum((size - 1) * stride for size, stride in zip(value.shape, value.stride()))
    if value.numel() > span:  # strides that overlap: each element read is in this stretch of the storage
        value = value.as_strided((span,), (1,), value.storage_offset())
    if torch.isfinite(value.sum(dtype=torch.float32)):
        return True
    # isfinite has no float8 kernels: each piece is looked at as float32
    return all(bool(torch.isfinite(part.float()).all()) for part in value.reshape(-1).split(2**24))


def check_only_tensors(state, path: Path) -> None:
    """CheckpointError unless `state`, read from the file at `path`, is a dictionary of tensors
    (a training checkpoint holds more): the loader's rule, which `stepfoley weights check` applies too."""
    if not isinstance(state, Mapping):
        raise CheckpointError(f"Weights file {path} does not hold a dictionary of tensors "
                              f"(found {type(state).__name__}).")
    not_named = [repr(k)[:40] for k in state if not isinstance(k, str)]
    if not_named:
        raise CheckpointError(f"Weights file {path} names entries by other than text ({', '.join(not_named[:5])}): "
                              "it is not a weights file as published. Download it again.")
    not_tensors = [k for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if not_tensors:
        raise CheckpointError(
            f"Weights file {path} holds more than the network's weights (entries {', '.join(not_tensors[:5])} "
            "are not tensors): it looks like a training checkpoint, not the published weights file. Use the "
            "file the model's page publishes under this name.")


@dataclass(frozen=True)
class KeyMismatch:
    """How a file's key -> shape map differs from the one expected. wrong_shape holds
    (key, found, expected)."""

    missing: tuple[str, ...] = ()
    unexpected: tuple[str, ...] = ()
    wrong_shape: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...] = ()

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong_shape)

    def problems(self, limit: int = 6, labels: tuple[str, str, str] = ("missing", "unexpected", "wrong shape"),
                 expected_in: str = "the network") -> list[str]:
        """One phrase per kind of mismatch, "{n} {label}: k1, k2, ... (n more)"; a wrong shape
        reads "k is [..] in the file but [..] in {expected_in}"."""
        def listing(items):
            return ", ".join(items[:limit]) + (f", ... ({len(items) - limit} more)" if len(items) > limit else "")
        shapes = [f"{k} is {list(found)} in the file but {list(want)} in {expected_in}"
                  for k, found, want in self.wrong_shape]
        return [f"{len(items)} {label}: {listing(items)}"
                for label, items in zip(labels, (list(self.missing), list(self.unexpected), shapes)) if items]


def compare_keys(found: Mapping[str, ShapeLike], expected: Mapping[str, ShapeLike]) -> KeyMismatch:
    """The one comparison of keys and shapes behind every weight check (loading into a network,
    a manifest, a weight-norm-folded vocoder). Keys keep the order of their mapping."""
    found = {k: _shape(v) for k, v in found.items()}
    expected = {k: _shape(v) for k, v in expected.items()}
    return KeyMismatch(
        missing=tuple(k for k in expected if k not in found),
        unexpected=tuple(k for k in found if k not in expected),
        wrong_shape=tuple((k, found[k], want) for k, want in expected.items() if k in found and found[k] != want))


def load_strict(module: torch.nn.Module, state_dict: Mapping[str, torch.Tensor], what: str,
                advice: Union[str, Callable[[], str]],
                labels: tuple[str, str, str] = ("missing", "unexpected", "wrong shape"), limit: int = 6,
                assign: bool = False, source: str = "(in memory)", values_checked: bool = False) -> None:
    """`module.load_state_dict(state_dict, strict=True, assign=assign)`, after checking keys and
    shapes so that a foreign file raises CheckpointError "{what}: {n} missing: ...; {n} unexpected:
    ...; {n} wrong shape: k is [..] in the file but [..] in the network. {advice}". `labels` names
    the three kinds of mismatch; `advice` may be a callable, called only when the weights do not fit.
    Weights that hold NaN or infinities are refused too (check_finite), naming `source`, the file,
    unless `values_checked`: the caller ran check_finite over the whole file already."""
    own = module.state_dict()
    mismatch = compare_keys(state_dict, own)
    if not mismatch.ok:
        detail = "; ".join(mismatch.problems(limit, labels))
        raise CheckpointError(f"{what}: {detail}. {advice() if callable(advice) else advice}".rstrip())
    # whole numbers where the network holds real ones (torch refused them in words of its own)
    not_real = [k for k, v in state_dict.items() if own[k].is_floating_point() and not v.is_floating_point()]
    if not_real:
        found = ", ".join(f"{k} ({str(state_dict[k].dtype).removeprefix('torch.')})" for k in not_real[:limit])
        raise CheckpointError(f"{what}: {len(not_real)} weights hold whole numbers where the network's are real "
                              f"numbers: {found}. {advice() if callable(advice) else advice}".rstrip())
    if not values_checked:
        check_finite(state_dict, source)  # the fit's advice (the right file for the model) is not this one's
    try:
        module.load_state_dict(state_dict, strict=True, assign=assign)
    except RuntimeError as exc:  # whatever else torch refuses: said as the file's fault, not as a crash
        if is_out_of_memory(exc):
            raise  # a GPU's OutOfMemoryError is a RuntimeError too, and no fault of the file
        raise CheckpointError(f"{what}: the weights cannot be put into the network ({str(exc).splitlines()[0]}). "
                              f"{advice() if callable(advice) else advice}".rstrip()) from exc


@dataclass(frozen=True)
class ManifestReport:
    """How a state dict compares with a manifest. wrong_shape holds (key, found, expected)."""

    manifest: str
    missing: tuple[str, ...]
    unexpected: tuple[str, ...]
    wrong_shape: tuple[tuple[str, tuple[int, ...], tuple[int, ...]], ...]
    ignored: tuple[str, ...]  # present, but dropped by the loader (e.g. stale rotary buffers)
    num_parameters_found: int
    num_parameters_expected: int

    @property
    def ok(self) -> bool:
        return not (self.missing or self.unexpected or self.wrong_shape)

    def summary(self, limit: int = 5) -> str:
        if self.ok:
            return f"matches {self.manifest} ({self.num_parameters_found:,} values)"
        problems = KeyMismatch(self.missing, self.unexpected, self.wrong_shape).problems(
            limit, expected_in="the official layout")
        return f"does not match {self.manifest}: " + "; ".join(problems)


def _shape(value: ShapeLike) -> tuple[int, ...]:
    return tuple(value.shape) if isinstance(value, torch.Tensor) else tuple(int(d) for d in value)


def read_manifest(path: Union[str, os.PathLike]) -> dict:
    """The JSON object of a weights manifest (manifests/*.json, or a user's --manifests folder);
    CheckpointError naming the file where it cannot be read or is not a JSON object. Its entries'
    layout is for the reader to check (`manifest_layout_error`)."""
    path = Path(path)
    try:
        manifest = json.loads(path.read_text())
    except (OSError, ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise CheckpointError(f"Cannot read the weights manifest {path}: {exc}") from None
    if not isinstance(manifest, dict):
        raise manifest_layout_error(path, TypeError(f"a JSON {type(manifest).__name__}, not an object"))
    return manifest


def manifest_layout_error(path: Union[str, os.PathLike], exc: Exception) -> CheckpointError:
    """The error for a manifest that is JSON but not of the layout StepFoley writes (`exc`: the
    KeyError, TypeError, ... that reading an entry of it raised)."""
    return CheckpointError(f"The weights manifest {path} is not one StepFoley wrote ({type(exc).__name__}: {exc}); "
                           "give the folder of its manifests.")


def check_against_manifest(state_dict_or_shapes: Mapping[str, ShapeLike],
                           manifest_json_path: Union[str, os.PathLike]) -> ManifestReport:
    """Compare keys and shapes with a golden manifest (manifests/*.json).

    Accepts tensors or plain shapes. A manifest entry's `legacy_key` (old weight-norm names) counts
    as the same key. Keys the loader drops (`keys_dropped_or_ignored_on_load`) are reported as ignored.
    """
    manifest_path = Path(manifest_json_path)
    manifest = read_manifest(manifest_path)
    found = {k: _shape(v) for k, v in state_dict_or_shapes.items()}
    try:
        droppable = set(manifest.get("keys_dropped_or_ignored_on_load", ()))
        expected = {item["key"]: tuple(item["shape"]) for item in manifest["state_dict"]}
        # A legacy name stands for its key when the file does not also hold the key itself.
        legacy = {item["legacy_key"]: item["key"] for item in manifest["state_dict"]
                  if item.get("legacy_key") and item["key"] not in found and item["legacy_key"] in found}
    except (AttributeError, KeyError, TypeError) as exc:  # JSON, but not a manifest's layout
        raise manifest_layout_error(manifest_path, exc) from None
    as_named = {legacy.get(k, k): shape for k, shape in found.items()}
    ignored = tuple(k for k in as_named if k not in expected and k in droppable)
    mismatch = compare_keys({k: v for k, v in as_named.items() if k not in ignored}, expected)
    file_name = {key: name for name, key in legacy.items()}
    numel = sum(int(torch.Size(shape).numel()) for k, shape in as_named.items() if k in expected)
    return ManifestReport(
        manifest=manifest.get("name", manifest_path.stem), missing=mismatch.missing, unexpected=mismatch.unexpected,
        wrong_shape=tuple((file_name.get(k, k), f, want) for k, f, want in mismatch.wrong_shape), ignored=ignored,
        num_parameters_found=numel, num_parameters_expected=int(manifest.get("state_dict_numel", 0)))


def save_safetensors_atomic(state_dict: Mapping[str, torch.Tensor], path: Union[str, os.PathLike],
                            metadata: Optional[Mapping[str, str]] = None, overwrite: bool = False) -> Path:
    """Write a .safetensors file via a temporary file in the same folder and a rename, so a crash
    never leaves half a file under the real name. Refuses to replace an existing file unless
    `overwrite` is set. A file that cannot be written (a full or read-only disk) is a
    CheckpointError naming it and its folder."""
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    path = Path(path)
    if path.exists() and not overwrite:
        raise CheckpointError(f"{path} already exists; StepFoley does not overwrite weight files. "
                              f"Choose another name or remove the old file first.")
    metadata = dict(metadata or {})
    bad = [k for k, v in metadata.items() if not (isinstance(k, str) and isinstance(v, str))]
    if bad:
        raise CheckpointError(f"Metadata for {path} must map text to text; offending keys: {bad[:5]}. "
                              f"Encode other values as JSON strings.")
    tensors, seen = {}, set()
    for key, value in state_dict.items():
        tensor = value.detach().to("cpu").contiguous()
        # safetensors refuses tensors that share memory (tied weights): store separate copies.
        if tensor.numel() and tensor.untyped_storage().data_ptr() in seen:
            tensor = tensor.clone()
        if tensor.numel():
            seen.add(tensor.untyped_storage().data_ptr())
        tensors[key] = tensor
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as e:  # a file in the way, a read-only disk
        raise CheckpointError(f"Cannot make the folder {path.parent} for the weights file {path.name} "
                              f"({e.strerror or e}); choose another place, or make it writable.") from None
    try:
        return write_atomically(path, lambda temp: save_file(tensors, str(temp), metadata=metadata or None),
                                replace=overwrite)
    except FileExistsError:
        raise CheckpointError(f"{path} appeared while it was being written; StepFoley does not overwrite "
                              f"weight files. Choose another name.") from None
    except (OSError, SafetensorError) as e:  # a full or read-only disk
        reason = (e.strerror if isinstance(e, OSError) and e.strerror else str(e)) or type(e).__name__
        kept = "the old file is kept as it was" if overwrite and path.exists() else "nothing was written"
        raise CheckpointError(f"Cannot write the weights file {path} ({reason}); {kept}. Free some space in "
                              f"{path.parent}, or make it writable, and run the command again.") from None


def read_report(path: Union[str, os.PathLike]) -> dict:
    """The JSON training report a small network's file keeps in its metadata ({} if none)."""
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as f:
        return json.loads((f.metadata() or {}).get(REPORT_KEY, "{}"))


def config_from_report(config_type: type[Config], report: dict) -> Config:
    """The frozen config recorded in a report (JSON lists back to tuples)."""
    known = {f.name for f in fields(config_type)}
    return config_type(**{k: tuple(v) if isinstance(v, list) else v
                          for k, v in report["config"].items() if k in known})


def load_with_report(path: Union[str, os.PathLike], file_format: str, what: str, how_to_train: str,
                     build: Callable[[dict], Module]) -> Module:
    """The network saved at `path` with its training report, in eval mode on the CPU, with
    `.report` and `.path` set. `build(report)` makes the empty network from the recorded config
    (and may refuse the report with a CheckpointError). Every problem is a CheckpointError that
    says what to do."""
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    a_what = f"{'an' if what[:1] in 'aeiou' else 'a'} {what}"
    if not path.is_file():
        raise CheckpointError(f"The {what} {path} does not exist; {how_to_train}.")
    try:
        report = read_report(path)
        state = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as e:
        raise CheckpointError(f"The {what} {path} cannot be read ({e}); give {a_what} file, or {how_to_train}.")
    if report.get("format") != file_format:
        raise CheckpointError(f"{path} is not a StepFoley {what} (format {report.get('format')!r}, "
                              f"expected {file_format!r}); give {a_what} file, or {how_to_train}.")
    check_finite(state, path, f"Give {a_what} file that works, or {how_to_train}.")
    module = build(report)
    try:
        module.load_state_dict(state, strict=True)
    except RuntimeError as e:
        raise CheckpointError(f"{path} does not match the {what}'s layout ({e}); give {a_what} file made by this "
                              f"version, or {how_to_train}.")
    module.report, module.path = report, path
    return module.eval().requires_grad_(False)
