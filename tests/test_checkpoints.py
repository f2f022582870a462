"""engine.checkpoints with real files written by the tests, and MMAudio.load_weights errors."""

import json
import os
from dataclasses import replace

import pytest
import torch
from safetensors import safe_open

from stepfoley.engine.checkpoints import check_against_manifest, load_state_dict_file, save_safetensors_atomic
from stepfoley.engine.errors import CheckpointError
from stepfoley.engine.mmaudio import MMAudio, MMAudioConfig

TINY = MMAudioConfig(latent_dim=4, clip_dim=6, sync_dim=8, text_dim=5, hidden_dim=16, depth=2, fused_depth=1,
                     num_heads=2, latent_seq_len=20, clip_seq_len=8, sync_seq_len=16, text_seq_len=3, name="tiny_a")


def tiny_state_dict(cfg=TINY, seed=0):
    torch.manual_seed(seed)
    net = MMAudio(cfg)
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
    return net.state_dict()


def assert_same_tensors(a, b):
    assert list(a) == list(b) or sorted(a) == sorted(b)
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_pth_with_stale_rotary_buffer_loads(tmp_path):
    weights = tiny_state_dict()
    on_disk = {**weights, "latent_rot": torch.zeros(1, TINY.latent_seq_len, TINY.head_dim // 2, 2, 2)}
    path = tmp_path / "mmaudio_tiny.pth"
    torch.save(on_disk, path)

    loaded = load_state_dict_file(path)
    assert_same_tensors(loaded, on_disk)
    net = MMAudio(TINY)
    net.load_weights(loaded)
    assert_same_tensors(net.state_dict(), weights)


def test_safetensors_round_trip_keeps_metadata(tmp_path):
    weights = tiny_state_dict()
    path = save_safetensors_atomic(weights, tmp_path / "tiny.safetensors", {"model": "tiny_a"})
    loaded = load_state_dict_file(path)
    assert_same_tensors(loaded, weights)
    with safe_open(str(path), "pt") as f:
        assert f.metadata() == {"model": "tiny_a"}
    MMAudio(TINY).load_weights(loaded)
    assert [p.name for p in tmp_path.iterdir()] == ["tiny.safetensors"]  # no temporary left behind


def test_save_refuses_to_overwrite_and_keeps_the_old_file(tmp_path):
    path = tmp_path / "tiny.safetensors"
    save_safetensors_atomic({"a": torch.ones(2)}, path)
    before = path.read_bytes()
    with pytest.raises(CheckpointError, match="already exists"):
        save_safetensors_atomic({"a": torch.zeros(2)}, path)
    assert path.read_bytes() == before
    save_safetensors_atomic({"a": torch.zeros(3)}, path, overwrite=True)
    assert load_state_dict_file(path)["a"].shape == (3,)


def test_save_handles_tied_and_non_contiguous_tensors(tmp_path):
    base = torch.arange(6.0).view(2, 3)
    state = {"w": base, "tied": base, "t": base.t()}
    loaded = load_state_dict_file(save_safetensors_atomic(state, tmp_path / "x.safetensors"))
    assert_same_tensors(loaded, {k: v.contiguous() for k, v in state.items()})


def test_checkpoint_for_another_config_names_config_and_keys(tmp_path):
    other = replace(TINY, depth=3, hidden_dim=24, name="tiny_b")
    path = tmp_path / "other.pth"
    torch.save(tiny_state_dict(other), path)
    extra = [k for k in tiny_state_dict(other) if k not in tiny_state_dict(TINY)]
    with pytest.raises(CheckpointError) as caught:
        MMAudio(TINY).load_weights(load_state_dict_file(path))
    message = str(caught.value)
    assert "'tiny_a'" in message
    assert f"{len(extra)} unexpected key(s): {extra[0]}, " in message
    assert "audio_input_proj.0.weight is [24, 4, 7] in the file but [16, 4, 7] in the network" in message

    with pytest.raises(CheckpointError, match=r"'tiny_b'.*\d+ missing key\(s\): joint_blocks\.0\.clip_block\.linear1"):
        MMAudio(other).load_weights(tiny_state_dict(TINY))


def test_official_layout_in_the_wrong_model_names_the_right_one():
    """The advice comes from the loader (engine.loading), not from the network."""
    from stepfoley.engine.loading import load_flow_weights

    with torch.device("meta"):
        weights = MMAudio(MMAudioConfig.preset("small_44k")).state_dict()
        net = MMAudio(MMAudioConfig.preset("small_16k"))
    with pytest.raises(CheckpointError, match="'small_16k'.*mmaudio_large_44k_v2.pth needs the large_44k_v2 model"
                                              r"\)\. These weights look like the 'small_44k' model\.$"):
        load_flow_weights(net, weights)
    with pytest.raises(CheckpointError) as caught:
        net.load_weights(weights)
    assert "'small_16k'" in str(caught.value) and "Check that" not in str(caught.value)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_truncated_file_is_a_checkpoint_error_naming_it(tmp_path, suffix):
    path = tmp_path / f"cut{suffix}"
    if suffix == ".pth":
        torch.save(tiny_state_dict(), path)
    else:
        save_safetensors_atomic(tiny_state_dict(), path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match=str(path)) as caught:
        load_state_dict_file(path)
    assert "it ends early" in str(caught.value)
    assert "Error" not in str(caught.value) and "zip" not in str(caught.value)  # no library internals


def test_missing_file_and_unknown_type(tmp_path):
    with pytest.raises(CheckpointError, match="not found"):
        load_state_dict_file(tmp_path / "nope.pth")
    odd = tmp_path / "weights.npz"
    odd.write_bytes(b"x")
    with pytest.raises(CheckpointError, match="unknown file type"):
        load_state_dict_file(odd)


def test_nested_entry_is_unwrapped_only_when_named(tmp_path):
    path = tmp_path / "best_netG.pt"
    generator = {"conv.weight": torch.ones(2, 2)}
    torch.save({"generator": generator, "steps": torch.tensor(5)}, path)
    assert_same_tensors(load_state_dict_file(path, entry="generator"), generator)
    with pytest.raises(CheckpointError, match="'discriminator'"):
        load_state_dict_file(path, entry="discriminator")
    torch.save({"generator": generator}, path)
    with pytest.raises(CheckpointError, match="looks like a training checkpoint, not the published weights file"):
        load_state_dict_file(path)


def write_manifest(path, entries, dropped=()):
    path.write_text(json.dumps({"name": "toy", "keys_dropped_or_ignored_on_load": list(dropped),
                                "state_dict_numel": sum(torch.Size(e["shape"]).numel() for e in entries),
                                "state_dict": entries}))
    return path


def test_manifest_report_lists_missing_unexpected_and_wrong_shapes(tmp_path):
    manifest = write_manifest(tmp_path / "toy.json", [
        {"key": "a.weight", "shape": [2, 3]},
        {"key": "b.weight", "shape": [4]},
        {"key": "c.parametrizations.weight.original0", "shape": [5, 1, 1], "legacy_key": "c.weight_g"},
        {"key": "d.bias", "shape": [1]},
    ], dropped=["latent_rot"])
    report = check_against_manifest(
        {"a.weight": torch.zeros(2, 3), "b.weight": (5,), "c.weight_g": torch.Size([5, 1, 1]),
         "latent_rot": (1, 2), "extra": (3,)}, manifest)
    assert not report.ok
    assert report.missing == ("d.bias",)
    assert report.unexpected == ("extra",)
    assert report.wrong_shape == (("b.weight", (5,), (4,)),)
    assert report.ignored == ("latent_rot",)
    assert "d.bias" in report.summary() and "b.weight is [5] in the file but [4] in the official layout" in report.summary()


def test_manifest_report_ok_for_a_matching_state_dict(tmp_path):
    weights = tiny_state_dict()
    manifest = write_manifest(tmp_path / "tiny.json",
                              [{"key": k, "shape": list(v.shape)} for k, v in weights.items()])
    report = check_against_manifest(weights, manifest)
    assert report.ok and report.num_parameters_found == report.num_parameters_expected
    os.remove(manifest)
    with pytest.raises(CheckpointError, match="manifest"):
        check_against_manifest(weights, manifest)


def test_every_loader_names_the_keys_that_do_not_fit():
    """The VAE and the ControlNet loaders share load_strict: a foreign file is named key by key
    (torch's own RuntimeError used to reach the user, or bare lists of names)."""
    from stepfoley.engine.codec.vae import VAE, VAEConfig, load_vae

    small, wide = VAEConfig(data_dim=80, embed_dim=8, hidden_dim=32), VAEConfig(data_dim=80, embed_dim=8, hidden_dim=48)
    weights = VAE(wide).state_dict()
    with pytest.raises(CheckpointError) as caught:
        load_vae(weights, small, source="wide.pth")
    message = str(caught.value)
    assert message.startswith("wide.pth does not fit the 80-mel VAE (hidden width 32): ")
    assert "in the file but [32" in message and "wrong shape" in message and "v1-16.pth" in message


def test_compare_keys_keeps_the_order_of_each_mapping():
    from stepfoley.engine.checkpoints import compare_keys

    mismatch = compare_keys({"z": (1,), "a": (2,), "b": (3,)}, {"b": (4,), "y": (1,), "z": (1,), "x": (1,)})
    assert (mismatch.missing, mismatch.unexpected, mismatch.wrong_shape) == (("y", "x"), ("a",), (("b", (3,), (4,)),))
    assert mismatch.problems(limit=1) == ["2 missing: y, ... (1 more)", "1 unexpected: a",
                                          "1 wrong shape: b is [3] in the file but [4] in the network"]
    assert compare_keys({"a": torch.zeros(2)}, {"a": torch.Size([2])}).ok


def test_a_weights_folder_that_cannot_be_made_is_a_checkpoint_error(tmp_path):
    (tmp_path / "a-file").write_text("x")
    with pytest.raises(CheckpointError, match=r"Cannot make the folder .*a-file.* for the weights file w\.safetensors"):
        save_safetensors_atomic({"a": torch.ones(2)}, tmp_path / "a-file" / "w.safetensors")
    assert (tmp_path / "a-file").read_text() == "x"


def test_embedded_weights_recorded_with_another_network_config_are_refused(tmp_path):
    """The number of heads changes no tensor's shape: weights trained with 4 would load into the
    2-head network without a word."""
    from safetensors.torch import load_file

    from stepfoley.engine.embedded.model import WEIGHTS_PATH, build_embedded_model

    with safe_open(str(WEIGHTS_PATH), "pt") as f:
        meta = dict(f.metadata())
    recorded = json.loads(meta["net_config"])
    meta["net_config"] = json.dumps({**recorded, "num_heads": recorded["num_heads"] * 2})
    changed = save_safetensors_atomic(load_file(str(WEIGHTS_PATH)), tmp_path / "mini.safetensors", meta)
    with pytest.raises(CheckpointError, match=r"trained with another net config than this version builds \(num_heads\)"):
        build_embedded_model(weights_path=changed)
    assert build_embedded_model().model_id == "stepfoley-mini"  # the shipped file records what is built


@pytest.mark.parametrize("name", ["mmaudio_small_16k.pth", "v1-16.safetensors", "bigvgan_generator.pt"])
def test_a_git_lfs_pointer_is_named_as_one_with_what_to_do(tmp_path, name):
    """A Hugging Face repository cloned without Git LFS holds pointer files in place of the
    weights; "damaged, download it again" sent the user to clone it again, to the same end."""
    from stepfoley.engine.weights import tensor_shapes

    path = tmp_path / name
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 489240280\n")
    for read in (load_state_dict_file, tensor_shapes):
        with pytest.raises(CheckpointError, match=r"is a Git LFS pointer.*Run `git lfs pull`"):
            read(path)
    path.write_bytes(b"version 1\n" + os.urandom(64))  # other text: damaged, as before
    with pytest.raises(CheckpointError, match="damaged|cannot be read|not a readable"):
        load_state_dict_file(path)


OUT_OF_MEMORY_LOAD = """
import os, resource, sys
from stepfoley.engine.checkpoints import load_state_dict_file
from stepfoley.engine.errors import StepFoleyError
def mapped():
    return int(open("/proc/self/statm").read().split()[0]) * os.sysconf("SC_PAGE_SIZE")
resource.setrlimit(resource.RLIMIT_AS, (mapped() + 16 * 2**20, resource.RLIM_INFINITY))  # less than the file
try:
    load_state_dict_file(sys.argv[1])
    print("loaded")
except StepFoleyError as e:
    print(type(e).__name__, e.code, e)
"""


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads its address space from Linux's /proc")
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_file_that_does_not_fit_in_memory_is_not_called_damaged(tmp_path, suffix):
    """An intact file read with too little memory free was "damaged ... Download it again": gigabytes
    downloaded for nothing on a machine without overcommit (Windows). Memory really runs out here:
    the child's address space is capped below what the 48 MB file needs."""
    import subprocess
    import sys

    from safetensors.torch import save_file

    path = tmp_path / f"big{suffix}"
    weights = {"w": torch.zeros(12 * 2**20)}
    torch.save(weights, path) if suffix == ".pth" else save_file(weights, str(path))
    run = subprocess.run([sys.executable, "-c", OUT_OF_MEMORY_LOAD, str(path)], capture_output=True, text=True,
                         timeout=120)
    assert run.stdout.startswith("OutOfMemory out_of_memory There is not enough memory to load the weights file"), \
        run.stdout + run.stderr
    assert "(0.1 GB)" in run.stdout and "download" not in run.stdout.lower()


@pytest.mark.skipif(not os.path.exists("/proc/self/statm"), reason="reads its address space from Linux's /proc")
def test_a_small_file_declaring_terabytes_is_called_damaged_not_too_big_for_memory(tmp_path):
    """A legacy-format file of 383 bytes whose one storage claims 2^40 floats was "not enough
    memory to load": no computer has enough, and the file holds none of it. (The child's address
    space is capped, as above, so the allocation fails whatever the system's overcommit.)"""
    import io
    import subprocess
    import sys

    buffer = io.BytesIO()
    torch.save({"w": torch.ones(7)}, buffer, _use_new_zipfile_serialization=False)
    legacy = buffer.getvalue()
    numel = legacy.index(b"K\x07", legacy.index(b"cpu"))  # the storage's size in its pickled key, as BININT1
    path = tmp_path / "forged.pth"
    path.write_bytes(legacy[:numel] + b"\x8a\x06" + (2**40).to_bytes(6, "little") + legacy[numel + 2:])
    run = subprocess.run([sys.executable, "-c", OUT_OF_MEMORY_LOAD, str(path)], capture_output=True, text=True,
                         timeout=120)
    assert run.stdout.startswith(f"CheckpointError bad_checkpoint Weights file {path} is damaged: it declares "
                                 f"4,398.0 GB of weights in a file of {path.stat().st_size:,} bytes. Download it "
                                 "again."), run.stdout + run.stderr


def test_whole_numbers_where_the_network_holds_real_ones_are_a_checkpoint_error():
    """An integer tensor where the network has a float one ended in torch's own RuntimeError."""
    from stepfoley.engine.checkpoints import load_strict

    net = torch.nn.Linear(2, 3)
    state = {"weight": torch.zeros(3, 2, dtype=torch.int64), "bias": torch.zeros(3)}
    for assign in (False, True):
        with pytest.raises(CheckpointError, match=r"1 weights hold whole numbers .*: weight \(int64\)\. get another"):
            load_strict(net, state, "the test network", "get another", assign=assign)


def test_a_gpu_running_out_of_memory_while_weights_go_in_is_not_called_the_files_fault(monkeypatch):
    """torch's OutOfMemoryError is a RuntimeError, which load_strict turns into "the weights
    cannot be put into the network" with advice about the file. (Its error stands in for a GPU.)"""
    from stepfoley.engine.checkpoints import load_strict

    net = torch.nn.Linear(2, 3)

    def gpu_full(*args, **kwargs):
        raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    monkeypatch.setattr(net, "load_state_dict", gpu_full)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        load_strict(net, {"weight": torch.zeros(3, 2), "bias": torch.zeros(3)}, "the test network", "get another")


def _deflated(source, target):
    """The PyTorch file `source` with each of its zip records compressed: torch.load takes it."""
    import zipfile

    with zipfile.ZipFile(source) as given, zipfile.ZipFile(target, "w", zipfile.ZIP_DEFLATED) as packed:
        for info in given.infolist():
            packed.writestr(info.filename, given.read(info))
    return target


def test_a_pth_whose_records_are_compressed_is_refused_before_anything_is_unpacked(tmp_path):
    """torch.save never compresses; an 8 MB file of compressed zeros asked for 8.6 GB in the
    shape check that is meant to cost nothing."""
    from stepfoley.engine.weights import tensor_shapes

    torch.save({"w": torch.zeros(1000)}, tmp_path / "plain.pth")
    packed = _deflated(tmp_path / "plain.pth", tmp_path / "packed.pth")
    assert torch.load(packed, weights_only=True)["w"].shape == (1000,)  # torch itself takes it
    for read in (load_state_dict_file, tensor_shapes):
        with pytest.raises(CheckpointError, match="holds compressed parts"):
            read(packed)
    assert load_state_dict_file(tmp_path / "plain.pth")["w"].shape == (1000,)


def test_a_pth_whose_entries_are_not_named_by_text_is_refused_by_every_reader(tmp_path):
    """Its names were joined into a message: a TypeError's traceback."""
    from stepfoley.engine.weights import tensor_shapes

    torch.save({7: torch.zeros(2)}, tmp_path / "forged.pth")
    for read in (load_state_dict_file, tensor_shapes):
        with pytest.raises(CheckpointError, match="names entries by other than text"):
            read(tmp_path / "forged.pth")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_weights_that_hold_nan_or_infinity_are_refused_naming_them(tmp_path, suffix):
    """A diverged training's weights loaded without a word, and every job on them failed later."""
    from safetensors.torch import save_file

    from stepfoley.engine.checkpoints import load_strict

    net = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Linear(2, 2).to(torch.bfloat16))
    weights = {k: v.clone() for k, v in net.state_dict().items()}
    weights["0.bias"][1], weights["1.weight"][0, 0] = float("nan"), float("-inf")
    path = tmp_path / f"w{suffix}"
    torch.save(weights, path) if suffix == ".pth" else save_file(weights, str(path))
    with pytest.raises(CheckpointError, match=rf"Weights file {path}: 2 tensors hold values that are not numbers "
                                              r"\(NaN or infinite\), which no working network has \(0\.bias, "
                                              r"1\.weight\)\. The training that wrote it went wrong"):
        load_strict(net, load_state_dict_file(path), "the test network", "get another", source=str(path))


def test_what_a_loader_drops_may_hold_infinities():
    """Only what is loaded is checked: a file may carry a mask of -inf that its loader drops
    (open_clip's attn_mask, which engine.features.clip ignores), or a stale recomputed buffer."""
    from stepfoley.engine.mmaudio import MMAudio, MMAudioConfig

    config = MMAudioConfig(latent_dim=6, clip_dim=12, sync_dim=10, text_dim=14, hidden_dim=32, depth=2,
                           fused_depth=1, num_heads=2, latent_seq_len=20, clip_seq_len=8, sync_seq_len=16,
                           text_seq_len=5)
    net = MMAudio(config)
    weights = {k: torch.zeros_like(v) for k, v in net.state_dict().items()} | {
        "t_embed.freqs": torch.full((4,), float("-inf"))}
    net.load_weights(weights, source="flow.pth")
    weights["final_layer.conv.bias"] = torch.full_like(weights["final_layer.conv.bias"], float("nan"))
    with pytest.raises(CheckpointError, match=r"Weights file flow\.pth: 1 tensor holds .*\(final_layer\.conv\.bias\)"):
        net.load_weights(weights, source="flow.pth")


def test_the_finiteness_check_costs_what_the_file_holds_not_what_its_views_claim():
    """Large finite weights can overflow the quick sum without being refused; a view that repeats a
    few stored values over 2.8e14 elements (overlapping strides: a 788 KB file) is checked in its
    storage, where it took hours element by element; float8, which has no isfinite, is refused in
    words (review 198)."""
    from stepfoley.engine.checkpoints import check_finite

    check_finite({"big": torch.full((4,), 3e38), "half": torch.full((8,), 6e4, dtype=torch.float16)}, "w.pth")
    n = 65536
    check_finite({"overlap": torch.zeros(3 * n).as_strided((n, n, n), (1, 1, 1))}, "w.pth")
    poisoned = torch.zeros(3 * n)
    poisoned[2 * n] = float("nan")  # read by the view (its last element is storage[3n - 3])
    # an expanded column reads none of the NaN beside it in its storage (review 200)
    beside = torch.tensor([[1.0, float("nan")], [2.0, float("nan")]])
    check_finite({"column": beside[:, :1].expand(2, 4)}, "w.pth")
    for view in (poisoned.as_strided((n, n, n), (1, 1, 1)), torch.tensor([float("nan")]).expand(1000, 1000),
                 torch.tensor([0.0, float("nan")]).to(torch.float8_e4m3fn)):
        with pytest.raises(CheckpointError, match=r"1 tensor holds .* \(view\)\. ask"):
            check_finite({"view": view}, "w.pth", "ask")


def test_embedded_weights_holding_nan_are_refused(tmp_path):
    from safetensors.torch import load_file

    from stepfoley.engine.embedded.model import WEIGHTS_PATH, build_embedded_model

    with safe_open(str(WEIGHTS_PATH), "pt") as f:
        meta = dict(f.metadata())
    tensors = load_file(str(WEIGHTS_PATH))
    key = next(k for k in tensors if k.startswith("net.") and tensors[k].is_floating_point())
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    diverged = save_safetensors_atomic(tensors, tmp_path / "mini.safetensors", meta)
    with pytest.raises(CheckpointError, match=rf"Weights file {diverged}: 1 tensor holds values that are not numbers "
                                              rf".*\({key}\)\. The training that wrote them went wrong, or the file "
                                              r"is damaged\. Give the file `stepfoley train embedded` wrote"):
        build_embedded_model(weights_path=diverged)


def test_each_tensor_of_the_embedded_weights_is_checked_for_nan_once(monkeypatch):
    """The file was checked whole (its advice: reinstall or retrain), then each network's part
    again as it loaded, finding nothing more."""
    import stepfoley.engine.checkpoints as checkpoints
    from stepfoley.engine.embedded.model import WEIGHTS_PATH, build_embedded_model

    looked_at, judge = [], checkpoints._all_finite
    monkeypatch.setattr(checkpoints, "_all_finite", lambda value: looked_at.append(value) or judge(value))
    build_embedded_model()
    with safe_open(str(WEIGHTS_PATH), "pt") as f:
        real = sum(1 for key in f.keys() if f.get_slice(key).get_dtype().startswith(("F", "BF")))
    of_the_file = [v for v in looked_at if v.numel()]  # and the text encoder's, a file of its own
    assert len(of_the_file) >= real > 0
    assert len({(v.data_ptr(), v.shape) for v in of_the_file}) == len(of_the_file)


def test_a_network_with_its_report_holding_nan_is_refused(tmp_path):
    from stepfoley.engine.checkpoints import load_with_report
    from stepfoley.lab.evaluation.store import save_with_report

    net = torch.nn.Linear(2, 2)
    with torch.no_grad():
        net.bias.fill_(float("nan"))
    path = save_with_report(net, tmp_path / "probe.safetensors", {"format": "probe-1"})
    with pytest.raises(CheckpointError, match=r"probe\.safetensors: 1 tensor holds values that are not numbers .*"
                                              r"\(bias\)\. Give a probe file that works, or train one\."):
        load_with_report(path, "probe-1", "probe", "train one", lambda report: torch.nn.Linear(2, 2))


def test_a_text_encoder_holding_nan_is_refused(tmp_path):
    import shutil

    from safetensors.torch import load_file, save_file

    from stepfoley.engine.embedded.text import EmbeddedTextEncoder, packaged_model_dir

    shutil.copy(packaged_model_dir() / "vocab.txt", tmp_path / "vocab.txt")
    tensors = load_file(str(packaged_model_dir() / "model.safetensors"))
    key = next(k for k, v in tensors.items() if v.is_floating_point())
    tensors[key] = torch.full_like(tensors[key], float("nan"))
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"model\.safetensors: 1 tensor holds values that are not numbers .* "
                                              r"Reinstall it with"):
        EmbeddedTextEncoder(tmp_path)
