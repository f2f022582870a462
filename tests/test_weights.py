"""engine.weights and `stepfoley weights`: a fake weights folder with real files.

Manifest-shaped checkpoints are written cheaply: every tensor is a stride-0 view of one
number, which torch.save stores as a single-element storage, so a 171M-parameter VAE file
is a few kB and is checked exactly like the real one."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file, save_file

from conftest import REPO
from stepfoley.engine.codec.bigvgan import BigVGANConfig
from stepfoley.engine.errors import CheckpointError
from stepfoley.engine.weights import (
    FILES,
    VARIANTS,
    check_weights_dir,
    compare_with_manifest,
    convert_weights_dir,
    file_to_read,
    manifest_path,
    weights_folder,
)
from stepfoley.cli import main as cli_main


def manifest_shaped(name, legacy=False):
    entries = json.loads(manifest_path(name).read_text())["state_dict"]
    return {(e.get("legacy_key") if legacy else None) or e["key"]: torch.zeros(()).expand(e["shape"]) for e in entries}


def clip_shaped():
    # DFN5B's names and shapes, each tensor one stored number (as manifest_shaped's)
    from stepfoley.engine.features.clip import ClipConfig, ClipModel

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in ClipModel(ClipConfig()).state_dict().items()}
    return {k: torch.zeros(()).expand(shape) for k, shape in shapes.items()} | {"logit_scale": torch.zeros(())}


def save(obj, path):
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(obj, path)



# the 44.1 kHz BigVGAN-v2's config.json, as nvidia/bigvgan_v2_44khz_128band_512x ships its sizes
V2_CONFIG = json.dumps(dataclasses.asdict(BigVGANConfig.preset("v2_44k_512x")))


@pytest.fixture
def weights_dir(tmp_path):
    root = tmp_path / "weights"
    save(manifest_shaped("vae_16k"), root / "ext_weights" / "v1-16.pth")
    save({"generator": manifest_shaped("bigvgan_16k", legacy=True), "optim": {}}, root / "ext_weights" / "best_netG.pt")
    synch = manifest_shaped("synchformer")
    synch["afeat_extractor.proj.weight"] = torch.zeros(3, 3)  # ignored on load: must not count
    save(synch, root / "ext_weights" / "synchformer_state_dict.pth")
    flow = manifest_shaped("flow_small_16k")
    flow["t_embed.freqs"] = torch.zeros(128)  # stale buffer the loader drops
    flow["latent_mean"] = torch.zeros(1, 1, 40)  # a 44k tensor in a 16k file
    save(flow, root / "weights" / "mmaudio_small_16k.pth")
    clip = root / "ext_weights" / "DFN5B-CLIP-ViT-H-14-384"
    clip.mkdir()
    (clip / "open_clip_config.json").write_text("{}")
    save(clip_shaped(), clip / "open_clip_pytorch_model.bin")
    v2 = root / "ext_weights" / "bigvgan_v2_44khz_128band_512x"
    v2.mkdir()
    save({"generator": manifest_shaped("bigvgan_v2_44k", legacy=True)}, v2 / "bigvgan_generator.pt")  # no config.json
    (root / "controlnets").mkdir()
    (root / "controlnets" / "nag_small_16k.safetensors").write_bytes(b"")
    return root


def test_check_reports_present_missing_and_wrong_files(weights_dir):
    report = check_weights_dir(weights_dir)
    files = report.files
    for name in ("vae_16k", "bigvgan_16k", "synchformer", "clip"):
        assert files[name].ok, (name, files[name].problems)
    assert files["vae_16k"].verified and files["bigvgan_16k"].verified and files["synchformer"].verified
    flow = files["flow_small_16k"]
    assert flow.present and not flow.ok
    assert any("latent_mean is [1, 1, 40] in the file but [1, 1, 20] in the official layout" in p for p in flow.problems)
    assert not any("t_embed.freqs" in p for p in flow.problems)
    assert files["bigvgan_v2_44k"].present and files["bigvgan_v2_44k"].problems == ("config.json is missing in the folder",)
    assert not files["vae_44k"].present and not files["flow_large_44k"].present

    assert report.unusable("small_16k") == ["flow_small_16k"]
    assert report.unusable("large_44k") == ["flow_large_44k", "vae_44k", "bigvgan_v2_44k"]
    assert [p.name for p in report.controlnets] == ["nag_small_16k.safetensors"]
    text = report.text()
    assert "weights/mmaudio_small_16k.pth" in text and "small_16k: needs weights/mmaudio_small_16k.pth" in text


def test_quick_check_opens_nothing(weights_dir):
    (weights_dir / "ext_weights" / "v1-16.pth").write_bytes(b"not a checkpoint")
    quick = check_weights_dir(weights_dir, verify=False).files["vae_16k"]
    assert quick.ok and not quick.verified
    full = check_weights_dir(weights_dir).files["vae_16k"]
    assert not full.ok and "download it again" in full.problems[0]


def test_weight_norm_layouts_all_fit_the_bigvgan_manifest():
    spec = FILES["bigvgan_16k"]
    path = manifest_path("bigvgan_16k")
    entries = json.loads(path.read_text())["state_dict"]
    modern = {e["key"]: tuple(e["shape"]) for e in entries}
    legacy = {e["legacy_key"]: tuple(e["shape"]) for e in entries}
    folded = {
        k.replace(".parametrizations.weight.original1", ".weight"): v
        for k, v in modern.items()
        if not k.endswith(".original0")
    }
    for layout in (modern, legacy, folded):
        assert compare_with_manifest(spec, layout, path) == []
    broken = dict(folded)
    broken["conv_pre.weight"] = (1536, 128, 7)
    problems = compare_with_manifest(spec, broken, path)
    assert problems and "conv_pre.weight is [1536, 128, 7] in the file but [1536, 80, 7] in the official layout" in problems[0]


def test_packaged_manifests_match_the_golden_ones(golden):
    spec = importlib.util.spec_from_file_location("pack_weight_manifests", REPO / "tools" / "pack_weight_manifests.py")
    packer = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(packer)
    pairs = {packed_name: golden_name for golden_name, packed_name in packer.GOLDEN.items()}
    for packed_name, golden_name in pairs.items():
        packed = json.loads(manifest_path(packed_name).read_text())
        ref = json.loads((golden / "manifests" / f"{golden_name}.json").read_text())
        assert [(e["key"], e["shape"], e.get("legacy_key")) for e in packed["state_dict"]] == [
            (e["key"], e["shape"], e.get("legacy_key")) for e in ref["state_dict"]
        ], packed_name
        assert packed["keys_dropped_or_ignored_on_load"] == ref["keys_dropped_or_ignored_on_load"]
    assert set(pairs) | {"bigvgan_v2_44k"} == set(FILES)
    assert all(set(files) <= set(FILES) | {"clip"} for files in VARIANTS.values())


def small_manifests(folder, files: dict) -> Path:
    """Manifests for small stand-in checkpoints: name -> {key: tensor}."""
    folder.mkdir()
    for name, tensors in files.items():
        entries = [{"key": k, "shape": list(v.shape)} for k, v in tensors.items()]
        (folder / f"{name}.json").write_text(json.dumps({"name": name, "state_dict": entries}))
    return folder


def test_convert_writes_safetensors_copies_and_never_overwrites(tmp_path):
    root = tmp_path / "weights"
    generator = {"conv_pre.bias": torch.arange(4.0), "conv_pre.weight_v": torch.randn(4, 2, 7)}
    save({"generator": generator, "steps": torch.tensor(7)}, root / "ext_weights" / "best_netG.pt")
    vae = {"data_mean": torch.randn(1, 80, 1), "encoder.learnable_gain": torch.tensor(0.25)}
    save(vae, root / "ext_weights" / "v1-16.pth")
    save({"x": torch.ones(2)}, root / "ext_weights" / "v1-44.pth")
    existing = root / "ext_weights" / "v1-44.safetensors"
    existing.write_bytes(b"the user's own file")
    save({"latent_mean": torch.zeros(1, 1, 40)}, root / "weights" / "mmaudio_small_16k.pth")  # a 44k tensor
    manifests = small_manifests(tmp_path / "manifests", {"bigvgan_16k": generator, "vae_16k": vae, "vae_44k": {},
                                                         "flow_small_16k": {"latent_mean": torch.zeros(1, 1, 20)}})

    lines = []
    results = convert_weights_dir(root, log=lines.append, manifests_dir=manifests)
    assert {r.source.name: r.written for r in results} == {"v1-16.pth": True, "v1-44.pth": False, "best_netG.pt": True,
                                                          "mmaudio_small_16k.pth": False}
    # a wrong file gets no copy: the copy would be read from then on, and a new download would not mend it
    [wrong] = [r for r in results if r.refused]
    assert wrong.source.name == "mmaudio_small_16k.pth" and "latent_mean" in wrong.note
    assert not (root / "weights" / "mmaudio_small_16k.safetensors").exists()
    assert existing.read_bytes() == b"the user's own file"
    copy = load_file(str(root / "ext_weights" / "best_netG.safetensors"))
    assert copy.keys() == generator.keys() and all(torch.equal(copy[k], v) for k, v in generator.items())
    vae_copy = load_file(str(root / "ext_weights" / "v1-16.safetensors"))
    assert all(torch.equal(vae_copy[k], v) for k, v in vae.items())
    assert "  -> best_netG.safetensors: written (" in "\n".join(lines)
    assert not [p for p in os.listdir(root / "ext_weights") if p.endswith(".tmp")]
    assert file_to_read(root / "ext_weights" / "v1-16.pth").suffix == ".safetensors"
    again = convert_weights_dir(root, log=lines.append, manifests_dir=manifests)
    assert not any(r.written for r in again)


def test_convert_copies_only_what_the_loader_reads(tmp_path):
    """A key the check ignores may hold anything: one value repeated over 2^24 (a forged view,
    64 MB once written out; terabytes are as cheap to forge) was written out whole."""
    root = tmp_path / "weights"
    flow = {"latent_mean": torch.zeros(1, 1, 20)}
    save(flow | {"t_embed.freqs": torch.zeros(()).expand(2**24)}, root / "weights" / "mmaudio_small_16k.pth")
    sync = {"vfeat_extractor.w": torch.ones(3)}
    save(sync | {"afeat_extractor.w": torch.zeros(()).expand(2**24)}, root / "ext_weights" / "synchformer_state_dict.pth")
    manifests = small_manifests(tmp_path / "manifests", {"flow_small_16k": flow, "synchformer": sync, "vae_16k": {}})
    manifest = manifests / "flow_small_16k.json"
    manifest.write_text(json.dumps(json.loads(manifest.read_text()) | {"keys_dropped_or_ignored_on_load": ["t_embed.freqs"]}))

    results = convert_weights_dir(root, log=lambda line: None, manifests_dir=manifests)
    assert [r.written for r in results] == [True, True]
    assert load_file(str(root / "weights" / "mmaudio_small_16k.safetensors")).keys() == flow.keys()
    assert load_file(str(root / "ext_weights" / "synchformer_state_dict.safetensors")).keys() == sync.keys()
    assert all(r.target.stat().st_size < 4096 for r in results)


def test_a_wrong_copy_is_named_as_what_to_delete(weights_dir, capsys):
    from safetensors.torch import save_file

    save_file({"x": torch.zeros(2)}, str(weights_dir / "weights" / "mmaudio_small_44k.safetensors"))
    assert cli_main(["weights", "check", str(weights_dir)]) == 1
    out = capsys.readouterr().out
    assert ("the file read is mmaudio_small_44k.safetensors, which is read instead of mmaudio_small_44k.pth: "
            "delete it\n") in out  # there is no .pth to convert it from again
    # beside a .pth: the copy is what to delete, never the .pth to download again
    save_file({"x": torch.zeros(2)}, str(weights_dir / "ext_weights" / "v1-16.safetensors"))
    capsys.readouterr()
    assert cli_main(["weights", "check", str(weights_dir)]) == 1
    [line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ext_weights/v1-16.pth ")]
    assert "the file read is v1-16.safetensors, which is read instead of v1-16.pth: delete it" in line
    assert "download" not in line


def test_cli_check_and_convert(weights_dir, capsys):
    assert cli_main(["weights", "check", str(weights_dir)]) == 1  # the wrong 16k flow file
    out = capsys.readouterr().out
    assert "WRONG" in out and "latent_mean" in out
    (weights_dir / "weights" / "mmaudio_small_16k.pth").unlink()
    (weights_dir / "ext_weights" / "bigvgan_v2_44khz_128band_512x" / "config.json").write_text(V2_CONFIG)
    assert cli_main(["weights", "check", str(weights_dir)]) == 0
    assert cli_main(["weights", "check", "--quick", "--model", "small_16k", str(weights_dir)]) == 1
    capsys.readouterr()
    # a folder given wrong is a usage error, said on stderr
    assert cli_main(["weights", "check", str(weights_dir / "nowhere")]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert cli_main(["weights", "convert", str(weights_dir / "ext_weights" / "v1-16.pth")]) == 2
    assert "is a file: give the folder" in capsys.readouterr().err
    assert cli_main(["weights", "check", "--model", "small_8k", str(weights_dir)]) == 2
    assert "Unknown model 'small_8k'" in capsys.readouterr().err
    assert cli_main(["weights", "check", str(weights_dir), "--manifests", str(weights_dir / "none")]) == 1
    assert "holds no weight manifests (vae_16k.json, ...); give the folder" in capsys.readouterr().err


def test_a_weights_folder_that_cannot_be_read_is_said_not_raised(tmp_path, capsys, monkeypatch):
    import stepfoley.engine.weights as weights

    (tmp_path / "loop_a").symlink_to(tmp_path / "loop_b")
    (tmp_path / "loop_b").symlink_to(tmp_path / "loop_a")
    for command in ("check", "convert"):
        assert cli_main(["weights", command, str(tmp_path / "loop_a")]) == 2
        assert "cannot be opened" in capsys.readouterr().err
    (tmp_path / "w" / "ext_weights").mkdir(parents=True)

    def denied(root, spec, *args):
        raise PermissionError(13, "Permission denied", str(root / spec.relpath))

    monkeypatch.setattr(weights, "check_file", denied)  # what a folder this user may not read gives (root reads all)
    assert cli_main(["weights", "check", str(tmp_path / "w")]) == 1
    assert "cannot be read (permission denied); let your user read everything in" in capsys.readouterr().err


def test_weights_this_user_may_not_read_are_said_so_by_the_commands_that_load_them(weights_dir, tmp_path,
                                                                                   permission_bits_apply):
    """safetensors calls a file of mode 000 "No such file or directory": a .safetensors copy was
    said to be damaged, to be downloaded again, and the embedded model's weights not to be its
    weights; --weights in a folder this user may not enter was a PermissionError traceback."""
    import shutil
    import subprocess
    import sys

    from stepfoley.engine.embedded.model import WEIGHTS_PATH

    def stepfoley(*args):
        return subprocess.run([sys.executable, "-m", "stepfoley", *map(str, args)], capture_output=True, text=True,
                              preexec_fn=permission_bits_apply, env={**os.environ, "OMP_NUM_THREADS": "1"})

    copy = weights_dir / "ext_weights" / "v1-16.safetensors"  # what `weights convert` writes, read first
    save_file({"encoder.weight": torch.zeros(2)}, str(copy))
    copy.chmod(0)
    checked = stepfoley("weights", "check", weights_dir)
    assert checked.returncode == 1, checked.stderr
    assert (f"v1-16.pth  [16 kHz mel VAE (audio <-> latent)]: WRONG: Weights file {copy} cannot be read (permission "
            f"denied); let your user read it (e.g. chmod a+r '{copy}')") in checked.stdout
    assert "garbled" not in checked.stdout
    unreadable = tmp_path / "mini.safetensors"
    shutil.copy(WEIGHTS_PATH, unreadable)
    unreadable.chmod(0)
    closed = tmp_path / "closed"
    closed.mkdir()
    shutil.copy(WEIGHTS_PATH, closed / "mini.safetensors")
    closed.chmod(0)
    for weights, words in ((unreadable, f"Weights file {unreadable} cannot be read (permission denied); let your "
                                        "user read it"),
                           (closed / "mini.safetensors", f"{closed / 'mini.safetensors'} cannot be opened: your user "
                                                         f"may not enter the folder {closed} (permission denied); let "
                                                         f"your user enter it (e.g. chmod a+rx '{closed}').")):
        # the traceback was a failed load to `serve`, logged as an internal error
        for command in [["generate", tmp_path / "clip.mp4", "0", "1", "rain", "--out", tmp_path],
                        *([["serve", "--port", "0"]] if weights.parent == closed else [])]:
            run = stepfoley(*command, "--weights", weights, "--device", "cpu")
            assert run.returncode == 2 and words in run.stderr and "Traceback" not in run.stderr, run.stderr
    # the embedded model's loader itself (its packaged file, read without the command line's check)
    built = subprocess.run([sys.executable, "-c", "import sys; from stepfoley.engine.embedded.model import "
                            "build_embedded_model; build_embedded_model(weights_path=sys.argv[1])", str(unreadable)],
                           capture_output=True, text=True, preexec_fn=permission_bits_apply)
    assert f"CheckpointError: Weights file {unreadable} cannot be read (permission denied)" in built.stderr
    # in a folder this user may not enter, that folder is what to open: chmod on the file cannot reach it
    inside = closed / "mini.safetensors"
    built = subprocess.run([sys.executable, "-c", "import sys; from stepfoley.engine.embedded.model import "
                            "build_embedded_model; build_embedded_model(weights_path=sys.argv[1])", str(inside)],
                           capture_output=True, text=True, preexec_fn=permission_bits_apply)
    assert (f"CheckpointError: Weights file {inside} cannot be read: your user may not enter the folder {closed} "
            f"(permission denied); let your user enter it (e.g. chmod a+rx '{closed}').") in built.stderr, built.stderr


def test_a_closed_folder_reached_through_a_link_is_the_one_named(tmp_path, permission_bits_apply):
    """A weights folder reached through a symbolic link (~/weights -> /data/closed/weights): the
    folder named was the link's, which the user may enter, so its chmod advice changed nothing."""
    import subprocess
    import sys

    closed = tmp_path / "closed"
    (closed / "weights").mkdir(parents=True)
    (closed / "weights" / "mini.safetensors").write_bytes(b"x")
    (tmp_path / "open").mkdir()
    (tmp_path / "open" / "link").symlink_to(closed / "weights")
    closed.chmod(0)
    try:
        said = subprocess.run([sys.executable, "-c", "import sys; from pathlib import Path; from stepfoley.engine."
                               "checkpoints import closed_folder_words; from stepfoley.engine.weights import "
                               "weights_folder\nprint(closed_folder_words(Path(sys.argv[1], 'mini.safetensors')))\n"
                               "weights_folder(sys.argv[1])", str(tmp_path / "open" / "link")],
                              capture_output=True, text=True, preexec_fn=permission_bits_apply)
    finally:
        closed.chmod(0o755)
    words = f"your user may not enter the folder {closed} (permission denied); let your user enter it"
    assert said.stdout.startswith(words), said.stdout + said.stderr
    assert f"CheckpointError: {tmp_path / 'open' / 'link'} cannot be opened: {words}" in said.stderr, said.stderr


def test_embedded_weights_in_a_closed_folder_are_said_so_where_is_file_says_false(tmp_path, permission_bits_apply):
    """Python 3.14's Path.is_file() is os.path.isfile(), False where the folder cannot be entered
    (3.11's raised PermissionError): the loader called those weights missing, "Reinstall
    StepFoley". Run here with is_file as 3.14 has it."""
    import shutil
    import subprocess
    import sys

    from stepfoley.engine.embedded.model import WEIGHTS_PATH

    closed = tmp_path / "closed"
    closed.mkdir()
    shutil.copy(WEIGHTS_PATH, closed / "mini.safetensors")
    closed.chmod(0)
    try:
        built = subprocess.run([sys.executable, "-c", "import os, pathlib, sys\n"
                                "pathlib.Path.is_file = lambda self, **_: os.path.isfile(self)  # Python 3.14's\n"
                                "from stepfoley.engine.embedded.model import build_embedded_model\n"
                                "build_embedded_model(weights_path=pathlib.Path(sys.argv[1]))",
                                str(closed / "mini.safetensors")],
                               capture_output=True, text=True, preexec_fn=permission_bits_apply)
    finally:
        closed.chmod(0o755)
    assert (f"CheckpointError: Weights file {closed / 'mini.safetensors'} cannot be read: your user may not enter "
            f"the folder {closed} (permission denied)") in built.stderr, built.stderr

@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no named pipes on this system")
def test_what_stands_where_a_weights_file_or_folder_goes_is_said(weights_dir, capsys):
    """What a folder no one may read is to root, which reads any mode (the CI's user): a pipe
    where a checkpoint goes was called missing, and a pipe given as the folder said not to exist;
    weights/ saved as a file left its flow network "missing"; a NAG ControlNet at a link to
    nothing, a folder or a pipe was passed over in silence, and the model ran without NAG."""
    import shutil

    vae = weights_dir / "ext_weights" / "v1-16.pth"
    vae.unlink()
    os.mkfifo(vae)
    shutil.rmtree(weights_dir / "weights")
    (weights_dir / "weights").write_bytes(b"")
    controlnet = weights_dir / "controlnets" / "small_16k.safetensors"
    controlnet.symlink_to(weights_dir / "controlnets" / "gone.safetensors")
    (weights_dir / "controlnets" / "small_44k.safetensors").mkdir()
    os.mkfifo(weights_dir / "controlnets" / "medium_44k.safetensors")
    report = check_weights_dir(weights_dir, verify=False)
    assert report.files["vae_16k"].missing == "missing: it is a pipe or a device, where a file is expected"
    assert report.files["flow_small_16k"].missing == "missing: it would be in weights/, which is a file, not a folder"
    assert report.files["controlnet_small_16k"].missing == (f"missing: it is a link to {weights_dir / 'controlnets'}"
                                                            "/gone.safetensors, which does not exist")
    assert report.files["controlnet_small_44k"].missing == "missing: it is a folder, where a file is expected"
    assert report.files["controlnet_medium_44k"].missing == "missing: it is a pipe or a device, where a file is expected"
    assert "controlnet_large_44k" not in report.files  # none there: the model runs without NAG, as always
    assert "controlnet_small_16k" in report.unusable("small_16k")
    (weights_dir / "ext_weights" / "bigvgan_v2_44khz_128band_512x" / "config.json").write_text(V2_CONFIG)
    assert cli_main(["weights", "check", str(weights_dir), "--quick"]) == 0  # nothing there is wrong: some is missing
    assert "small_44k: needs weights/mmaudio_small_44k.pth, ext_weights/v1-44.pth, controlnets/small_44k.safetensors " \
           "to fit it, or gone" in capsys.readouterr().out
    assert cli_main(["weights", "check", str(vae)]) == 2
    assert f"{vae} is not a folder but a pipe or a device: give the folder" in capsys.readouterr().err


def test_cli_convert_writes_the_copies_and_points_to_the_benchmark(tmp_path, capsys):
    save({"a": torch.randn(8, 8)}, tmp_path / "ext_weights" / "v1-44.pth")
    assert cli_main(["weights", "convert", str(tmp_path), "--manifests", str(tmp_path / "ext_weights")]) == 1
    assert "holds no weight manifests" in capsys.readouterr().err  # so nothing could be checked: nothing copied
    assert not (tmp_path / "ext_weights" / "v1-44.safetensors").exists()
    manifests = small_manifests(tmp_path / "manifests", {"vae_44k": {"a": torch.randn(8, 8)}, "vae_16k": {}})
    assert cli_main(["weights", "convert", str(tmp_path), "--manifests", str(manifests)]) == 0
    out = capsys.readouterr().out
    # a one-shot timing right after writing the copy (in the page cache) said 20x where reading
    # every tensor said 0.5-2x: the benchmark measures it properly
    assert "-> v1-44.safetensors: written (1 tensor)" in out and "stepfoley bench weights-load --dir" in out
    assert (tmp_path / "ext_weights" / "v1-44.safetensors").is_file()


def test_codec_missing_file_names_it(tmp_path):
    from stepfoley.engine.codec.mmaudio_codec import MMAudioCodec

    with pytest.raises(CheckpointError, match=r"v1-16\.pth: the 16 kHz mel VAE"):
        MMAudioCodec.from_directory(tmp_path, "16k")
    save({}, tmp_path / "ext_weights" / "v1-44.pth")
    with pytest.raises(CheckpointError, match=r"bigvgan_v2_44khz_128band_512x/bigvgan_generator\.pt: the 44\.1 kHz BigVGAN-v2"):
        MMAudioCodec.from_directory(tmp_path, "44k")


@pytest.mark.parametrize("content", [torch.ones(3), [torch.ones(3)], 7])
def test_a_file_under_an_official_name_that_is_not_a_dictionary_is_wrong_not_a_crash(weights_dir, capsys, content):
    save(content, weights_dir / "ext_weights" / "v1-16.pth")  # entry None
    save(content, weights_dir / "weights" / "mmaudio_small_16k.pth")
    for name in ("vae_16k", "flow_small_16k"):
        problems = check_weights_dir(weights_dir).files[name].problems
        assert any("not a dictionary of tensors" in p and "download the official file again" in p for p in problems)
    assert cli_main(["weights", "check", str(weights_dir)]) == 1
    assert "v1-16.pth loads, but holds a" in capsys.readouterr().out


@pytest.mark.skipif(not hasattr(os, "fork"), reason="a file size limit (RLIMIT_FSIZE) needs POSIX")
def test_convert_on_a_disk_that_takes_no_more_says_so_and_leaves_nothing(tmp_path):
    """`weights convert` where the disk takes no 64 kB file (a file size limit stands in for a full
    disk, in a child process): a message naming the file, its folder and what to do; no traceback,
    no half copy, no temporary file; and the other files still converted (the first write that
    failed ended the command)."""
    import resource
    import signal
    import subprocess
    import sys

    save({"a": torch.randn(128, 256)}, tmp_path / "ext_weights" / "v1-16.pth")  # 128 kB
    save({"generator": {"b": torch.randn(32, 32)}}, tmp_path / "ext_weights" / "best_netG.pt")  # 4 kB, after it
    manifests = small_manifests(tmp_path / "manifests", {"vae_16k": {"a": torch.zeros(128, 256)},
                                                         "bigvgan_16k": {"b": torch.zeros(32, 32)}})
    before = sorted(os.listdir(tmp_path / "ext_weights"))

    def limited():
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # a write past the limit fails with EFBIG
        resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, resource.getrlimit(resource.RLIMIT_FSIZE)[1]))

    done = subprocess.run([sys.executable, "-m", "stepfoley", "weights", "convert", str(tmp_path),
                           "--manifests", str(manifests)],
                          capture_output=True, text=True, preexec_fn=limited, timeout=300)
    target = tmp_path / "ext_weights" / "v1-16.safetensors"
    assert done.returncode == 1, done.stderr
    assert f"Cannot write the weights file {target}" in done.stdout and "nothing was written" in done.stdout
    assert f"Free some space in {target.parent}" in done.stdout and "Traceback" not in done.stderr
    assert sorted(os.listdir(tmp_path / "ext_weights")) == sorted(before + ["best_netG.safetensors"])



def test_a_copy_made_from_another_pth_is_not_read_and_convert_makes_it_again(tmp_path):
    import shutil

    from stepfoley.engine.checkpoints import load_state_dict_file
    from stepfoley.engine.weights import check_file, convert_file

    manifests = small_manifests(tmp_path / "manifests", {"vae_16k": {"a": torch.zeros(4)}})
    spec = FILES["vae_16k"]
    pth = tmp_path / "w" / spec.checkpoint_relpath()
    save({"a": torch.zeros(4)}, pth)
    assert convert_file(pth, spec.entry, spec, manifests).written
    copy = pth.with_suffix(".safetensors")
    assert file_to_read(pth) == copy
    # the folder copied elsewhere (new dates, the .pth newer than its copy): still the same file
    shutil.copytree(tmp_path / "w", tmp_path / "moved")
    moved = tmp_path / "moved" / spec.checkpoint_relpath()
    os.utime(moved, ns=(2**62, 2**62))
    assert file_to_read(moved) == moved.with_suffix(".safetensors")
    save({"a": torch.ones(4)}, pth)  # a new download of another file: its dates may be older (curl -R)
    os.utime(pth, ns=(1, 1))
    assert file_to_read(pth) == pth
    report = check_file(tmp_path / "w", spec, manifests)
    assert report.ok and "v1-16.safetensors was made from another v1-16.pth" in report.notes[0]
    again = convert_file(pth, spec.entry, spec, manifests)
    assert again.written and again.note.startswith("made again")
    assert file_to_read(pth) == copy and torch.equal(load_state_dict_file(copy)["a"], torch.ones(4))


def test_a_file_torch_refuses_is_named_without_torchs_advice_to_load_it_unsafely(tmp_path):
    from stepfoley.engine.weights import tensor_shapes

    import datetime

    garbage = tmp_path / "best_netG.pt"  # an object only its code could rebuild: torch's weights-only refusal
    torch.save({"generator": datetime.date(2026, 12, 2)}, garbage)
    with pytest.raises(CheckpointError) as error:
        tensor_shapes(garbage, "generator")
    assert "not a plain weights file" in str(error.value) and "weights_only" not in str(error.value)


def test_a_damaged_checkpoint_is_not_converted_and_the_others_are(weights_dir, capsys):
    flow = weights_dir / "weights" / "mmaudio_small_16k.pth"
    data = flow.read_bytes()
    flow.write_bytes(data[: len(data) // 2])  # a broken download
    assert cli_main(["weights", "convert", str(weights_dir)]) == 1
    out = capsys.readouterr().out
    assert "mmaudio_small_16k.safetensors: not converted: " in out and "cannot be read" in out
    assert (weights_dir / "ext_weights" / "v1-16.safetensors").is_file()
    assert (weights_dir / "ext_weights" / "synchformer_state_dict.safetensors").is_file()


def test_a_broken_link_at_a_copys_name_is_said_as_that(weights_dir, capsys):
    """convert said the copy "appeared while it was being written"; check said nothing of it."""
    link = weights_dir / "ext_weights" / "v1-16.safetensors"
    link.symlink_to(weights_dir / "gone.safetensors")
    cli_main(["weights", "check", str(weights_dir)])  # 1: the fixture's flow network is not the official one
    [line] = [line for line in capsys.readouterr().out.splitlines() if line.startswith("  ext_weights/v1-16.pth ")]
    assert "note: v1-16.safetensors is a link to a file that is not there, so v1-16.pth is read instead" in line
    assert cli_main(["weights", "convert", str(weights_dir)]) == 1
    out = capsys.readouterr().out
    assert "v1-16.safetensors: not converted: v1-16.safetensors is a link to a file that is not there" in out
    assert "appeared" not in out and link.is_symlink()
    assert (weights_dir / "ext_weights" / "synchformer_state_dict.safetensors").is_file()  # the others converted


def test_what_a_killed_convert_left_is_swept_by_the_next(weights_dir):
    import subprocess
    import sys

    from stepfoley import atomic

    gone = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    left = weights_dir / "ext_weights" / f".v1-16.safetensors.{atomic._HOST}-{gone.stdout.strip()}-0badf00d.part"
    left.write_bytes(b"\0" * 4096)  # a copy as big as the checkpoint, in life
    convert_weights_dir(weights_dir, log=lambda line: None)
    assert not left.exists() and (weights_dir / "ext_weights" / "v1-16.safetensors").is_file()


def test_a_checkpoint_the_user_may_not_read_is_said_so_not_called_damaged(weights_dir, monkeypatch):
    # as root (CI) nothing is unreadable: torch.load meets what open() raises for another user
    def denied(path, *args, **kwargs):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(torch, "load", denied)
    report = check_weights_dir(weights_dir)
    problems = " ".join(report.files["vae_16k"].problems)
    assert "(permission denied); let your user read it" in problems and "download it again" not in problems
    from stepfoley.engine.checkpoints import load_state_dict_file
    with pytest.raises(CheckpointError, match="cannot be read \\(permission denied\\)"):
        load_state_dict_file(weights_dir / "ext_weights" / "v1-16.pth")


def test_the_clip_weights_are_checked_not_only_found(weights_dir):
    bin_file = weights_dir / "ext_weights" / "DFN5B-CLIP-ViT-H-14-384" / "open_clip_pytorch_model.bin"
    bin_file.write_bytes(b"")
    report = check_weights_dir(weights_dir)
    assert not report.files["clip"].ok and "cannot be read" in report.files["clip"].problems[0]
    assert "clip" in report.unusable("small_16k")
    shapes = clip_shaped()
    shapes["visual.proj"] = torch.zeros(()).expand(3, 3)
    del shapes["ln_final.weight"]
    save(shapes, bin_file)
    problems = " ".join(check_weights_dir(weights_dir).files["clip"].problems)
    assert "1 missing: ln_final.weight" in problems and "1 wrong shape: visual.proj" in problems
    assert check_weights_dir(weights_dir, verify=False).files["clip"].ok  # --quick: present is enough


def test_a_copy_without_its_official_file_is_named_plainly(tmp_path):
    from stepfoley.engine.weights import described_source

    official, copy = tmp_path / "v1-16.pth", tmp_path / "v1-16.safetensors"
    official.write_bytes(b"x")
    copy.write_bytes(b"x")
    assert "the .safetensors copy read instead of v1-16.pth; if it is wrong, delete it" in \
        described_source(official, file_to_read(official))
    official.unlink()  # the user kept the copy alone, as docs/weights.md allows
    assert described_source(official, file_to_read(official)) == str(copy)


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_a_damaged_file_checked_is_named_without_the_librarys_internals(tmp_path, suffix):
    from safetensors.torch import save_file

    from stepfoley.engine.weights import tensor_shapes

    path = tmp_path / f"v1-16{suffix}"
    tensors = {"a": torch.ones(64, 64)}
    torch.save(tensors, path) if suffix == ".pth" else save_file(tensors, str(path))
    path.write_bytes(path.read_bytes()[:200])  # a broken download
    with pytest.raises(CheckpointError) as error:
        tensor_shapes(path, None)
    assert "it ends early" in str(error.value) and "Error" not in str(error.value)
    assert error.value.__cause__ is not None  # the library's words stay for a log


def test_a_damaged_file_of_the_chosen_model_is_said_before_anything_loads(weights_dir, monkeypatch):
    """The vocoder is a Git LFS pointer and the flow network is fine: the loader used to build
    and read the flow network first (gigabytes, tens of seconds) and only then find the
    vocoder; the chosen model's files are now read as far as their headers first."""
    import stepfoley.engine.checkpoints
    import stepfoley.engine.mmaudio
    from stepfoley.engine.loading import load_foley_model

    def never(*args, **kwargs):
        raise AssertionError("something large was built or read")

    monkeypatch.setattr(stepfoley.engine.checkpoints, "load_state_dict_file", never)
    monkeypatch.setattr(stepfoley.engine.mmaudio, "MMAudio", never)
    save(manifest_shaped("flow_small_16k"), weights_dir / "weights" / "mmaudio_small_16k.pth")
    (weights_dir / "ext_weights" / "best_netG.pt").write_text(
        "version https://git-lfs.github.com/spec/v1\noid sha256:" + "0" * 64 + "\nsize 1\n")
    # each problem said once, after the file it is about ("...download it again.." ran on before)
    with pytest.raises(CheckpointError, match=r"cannot run small_16k: ext_weights/best_netG.pt \(16 kHz BigVGAN vocoder "
                                              r"\(mel -> audio\)\): Weights file .*Git LFS pointer") as refused:
        load_foley_model(weights_dir, "small_16k")
    assert ".." not in str(refused.value) and "the file itself. See docs/weights.md" in str(refused.value)


def test_a_clip_of_another_size_is_not_called_ready(weights_dir, capsys):
    """apple/DFN5B-CLIP-ViT-H-14 (224 px) in the -384 folder: its weights fit its own config, so
    the check called it ok and the first job failed after the region's features."""
    from stepfoley.engine.features.clip import ClipConfig, ClipModel

    with torch.device("meta"):
        shapes = {k: v.shape for k, v in ClipModel(ClipConfig(image_size=224)).state_dict().items()}
    clip = weights_dir / "ext_weights" / "DFN5B-CLIP-ViT-H-14-384"
    save({k: torch.zeros(()).expand(s) for k, s in shapes.items()}, clip / "open_clip_pytorch_model.bin")
    (clip / "open_clip_config.json").write_text(json.dumps({"model_cfg": {"vision_cfg": {"image_size": 224}}}))
    report = check_weights_dir(weights_dir)
    problems = " ".join(report.files["clip"].problems)
    assert "reads 224-px frames, and MMAudio gives CLIP 384-px ones" in problems
    assert "put that one in the folder" in problems and "clip" in report.unusable("small_16k")


def test_a_controlnet_for_another_model_is_not_called_ready(weights_dir, capsys, monkeypatch):
    from stepfoley.engine.controlnet import AudioControlNet, save_controlnet
    from stepfoley.engine.mmaudio import MMAudio, MMAudioConfig

    save(manifest_shaped("flow_small_16k"), weights_dir / "weights" / "mmaudio_small_16k.pth")
    (weights_dir / "ext_weights" / "bigvgan_v2_44khz_128band_512x" / "config.json").write_text(V2_CONFIG)
    assert cli_main(["weights", "check", "--model", "small_16k", str(weights_dir)]) == 0
    tiny = MMAudioConfig(latent_dim=20, clip_dim=1024, sync_dim=768, text_dim=1024, hidden_dim=64, depth=2,
                         fused_depth=1, num_heads=2, name="tiny")
    save_controlnet(weights_dir / "controlnets" / "small_16k.safetensors",
                    AudioControlNet.from_base(MMAudio(tiny), depth=1))
    capsys.readouterr()
    assert cli_main(["weights", "check", "--model", "small_16k", str(weights_dir)]) == 1
    out = capsys.readouterr().out
    assert "[NAG ControlNet for small_16k]: WRONG: The NAG ControlNet small_16k.safetensors was made for another " \
           "base model" in out and "Remove it to run small_16k without NAG" in out
    assert "small_16k: needs controlnets/small_16k.safetensors to fit it, or gone" in out
    # loading refuses it too, before the flow network is built
    import stepfoley.engine.mmaudio
    from stepfoley.engine.loading import load_foley_model

    def never(*args, **kwargs):
        raise AssertionError("the flow network was built")

    monkeypatch.setattr(stepfoley.engine.mmaudio, "MMAudio", never)
    with pytest.raises(CheckpointError, match="small_16k.safetensors was made for another base model"):
        load_foley_model(weights_dir, "small_16k")


def test_weights_under_another_name_or_in_another_folder_are_named_with_what_to_do(weights_dir, capsys):
    """A browser's "(1)", a file dropped beside weights/ instead of in it, a file of no model,
    and the weights/ folder given instead of the one above: each said, not just "missing"."""
    from stepfoley.engine.loading import load_foley_model

    flow = weights_dir / "weights" / "mmaudio_small_16k.pth"
    flow.rename(weights_dir / "weights" / "mmaudio_small_16k (1).pth")
    (weights_dir / "ext_weights" / "v1-16.pth").rename(weights_dir / "v1-16.pth")
    (weights_dir / "ext_weights" / "notes.bin").write_bytes(b"x")
    (weights_dir / "ext_weights" / "bigvgan_v2_44khz_128band_512x" / "config.json").write_text(V2_CONFIG)
    assert cli_main(["weights", "check", str(weights_dir)]) == 0  # nothing present is wrong
    out = capsys.readouterr().out
    assert "not read: weights/mmaudio_small_16k (1).pth: rename or move it to weights/mmaudio_small_16k.pth" in out
    assert "not read: v1-16.pth: rename or move it to ext_weights/v1-16.pth" in out
    assert "not read: ext_weights/notes.bin: no model reads this file" in out
    # a second download beside the first, and CLIP's weights dropped in ext_weights/ itself
    (weights_dir / "ext_weights" / "best_netG (1).pt").write_bytes(b"x")
    (weights_dir / "ext_weights" / "open_clip_pytorch_model.bin").write_bytes(b"x")
    cli_main(["weights", "check", str(weights_dir)])
    out = capsys.readouterr().out
    assert ("not read: ext_weights/best_netG (1).pt: a second copy of ext_weights/best_netG.pt, which is there; "
            "remove it once that one checks out") in out
    assert ("not read: ext_weights/open_clip_pytorch_model.bin: a second copy of "
            "ext_weights/DFN5B-CLIP-ViT-H-14-384/open_clip_pytorch_model.bin") in out
    with pytest.raises(CheckpointError, match=r"No MMAudio flow network found .* Not read: weights/mmaudio_small_16k "
                                              r"\(1\)\.pth: rename or move it to weights/mmaudio_small_16k\.pth"):
        load_foley_model(weights_dir)
    # with the model named too (--model): said as well, after what that model lacks
    with pytest.raises(CheckpointError, match=r"cannot run small_16k: .* is missing\. Not read: .*weights/mmaudio_small_16k "
                                              r"\(1\)\.pth: rename or move it to weights/mmaudio_small_16k\.pth"):
        load_foley_model(weights_dir, "small_16k")
    assert cli_main(["weights", "check", str(weights_dir / "weights")]) == 0
    assert f"this looks like the weights/ folder itself: give the folder that holds it, {weights_dir}" in \
        capsys.readouterr().out
    cli_main(["weights", "check", str(weights_dir)])  # a folder named weights that holds ext_weights/: the right one
    assert "this looks like" not in capsys.readouterr().out


def test_hash_finds_a_file_whose_bytes_are_not_the_official_ones_though_its_tensors_fit(weights_dir, monkeypatch,
                                                                                        capsys):
    import dataclasses
    import hashlib

    vae = weights_dir / "ext_weights" / "v1-16.pth"
    published = hashlib.md5(vae.read_bytes()).hexdigest()  # stands for the MD5 MMAudio publishes
    monkeypatch.setitem(FILES, "vae_16k", dataclasses.replace(FILES["vae_16k"], md5=published))
    report = check_weights_dir(weights_dir, md5=True)
    assert report.files["vae_16k"].ok and report.files["vae_16k"].md5_matches
    assert "[16 kHz mel VAE (audio <-> latent)]: ok, keys and shapes match, MD5 is the published one" in report.text()
    assert not check_weights_dir(weights_dir).files["vae_16k"].md5_matches  # not asked: not read

    changed = manifest_shaped("vae_16k")
    key = next(iter(changed))
    changed[key] = changed[key].clone().fill_(1.0)  # the same keys and shapes, another value
    save(changed, vae)
    assert check_weights_dir(weights_dir).files["vae_16k"].ok  # the shapes cannot tell
    found = check_weights_dir(weights_dir, md5=True).files["vae_16k"]
    assert not found.ok and not found.md5_matches
    assert found.problems == (f"its bytes are not the official file's (MD5 {hashlib.md5(vae.read_bytes()).hexdigest()}, "
                              f"published {published}): a download cut short or changed on the way; download it again",)
    assert cli_main(["weights", "check", "--hash", str(weights_dir)]) == 1
    captured = capsys.readouterr()
    assert "its bytes are not the official file's" in captured.out and "Comparing MD5s" in captured.err
    assert cli_main(["weights", "check", "--hash", "--quick", str(weights_dir)]) == 2
    assert "give one of them" in capsys.readouterr().err

    save(manifest_shaped("vae_16k"), vae)  # the published bytes again, with a copy beside them
    convert_weights_dir(weights_dir, log=lambda line: None)
    with_copy = check_weights_dir(weights_dir, md5=True).files["vae_16k"]
    assert with_copy.md5_matches and with_copy.read_from.name == "v1-16.safetensors"
    assert with_copy.notes == ("the MD5 is v1-16.pth's; v1-16.safetensors, which is what loads, was not compared "
                               "(delete it and `stepfoley weights convert` makes it again from the checked file)",)
    # wrong bytes with a copy beside them: downloading the file again leaves the copy loading
    monkeypatch.setitem(FILES, "vae_16k", dataclasses.replace(FILES["vae_16k"], md5="0" * 32))
    wrong_with_copy = check_weights_dir(weights_dir, md5=True).files["vae_16k"]
    assert not wrong_with_copy.ok and wrong_with_copy.problems[-1] == (
        "v1-16.safetensors, made from a v1-16.pth and read instead of it, is what loads: delete it too, and run "
        "`stepfoley weights convert` once the new file is there")


def test_hash_says_a_lone_safetensors_copy_cannot_be_compared(tmp_path, monkeypatch):
    import dataclasses

    root = tmp_path / "weights"
    save(manifest_shaped("vae_16k"), root / "ext_weights" / "v1-16.pth")
    convert_weights_dir(root, log=lambda line: None)
    (root / "ext_weights" / "v1-16.pth").unlink()
    monkeypatch.setitem(FILES, "vae_16k", dataclasses.replace(FILES["vae_16k"], md5="0" * 32))
    report = check_weights_dir(root, md5=True).files["vae_16k"]
    assert report.ok and not report.md5_matches
    assert report.notes == ("only its .safetensors copy is here, and MMAudio publishes the MD5 of v1-16.pth, so its "
                            "bytes were not compared",)


def test_hash_names_the_official_file_whose_bytes_another_name_holds(weights_dir, monkeypatch):
    # mmaudio_large_44k.pth saved as mmaudio_large_44k_v2.pth fits the v2 model's keys and shapes;
    # its MD5 is told as the other official file's, not as a download to make again
    import dataclasses
    import hashlib

    vae = weights_dir / "ext_weights" / "v1-16.pth"
    monkeypatch.setitem(FILES, "vae_44k", dataclasses.replace(FILES["vae_44k"],
                                                              md5=hashlib.md5(vae.read_bytes()).hexdigest()))
    found = check_weights_dir(weights_dir, md5=True).files["vae_16k"]
    assert not found.ok and not found.md5_matches
    assert found.problems == ("its bytes are the official v1-44.pth, the 44.1 kHz mel VAE (audio <-> latent), not "
                              "v1-16.pth: give it its own name, ext_weights/v1-44.pth, and download v1-16.pth",)


def test_every_mmaudio_file_carries_its_published_md5_and_the_hub_files_none():
    published = {name for name, spec in FILES.items() if spec.md5}
    assert published == set(FILES) - {"bigvgan_v2_44k"}
    assert all(len(FILES[n].md5) == 32 and int(FILES[n].md5, 16) >= 0 for n in published)


@pytest.mark.parametrize("config, words", [
    ("<!DOCTYPE html>", "config.json is not readable JSON"),
    (json.dumps({**json.loads(V2_CONFIG), "use_bias_at_final": True}),
     "config.json describes another BigVGAN (use_bias_at_final True, not False)"),
    (json.dumps({"num_mels": 128}), "lacks upsample_rates"),
], ids=["html", "another-bigvgan", "incomplete"])
def test_a_vocoder_config_that_cannot_serve_is_said_before_anything_loads(weights_dir, capsys, config, words):
    """config.json was first read after the flow network had loaded, and one of another BigVGAN
    was blamed on the vocoder's weights file; `weights check` called such a folder ready."""
    (weights_dir / "ext_weights" / "bigvgan_v2_44khz_128band_512x" / "config.json").write_text(config)
    report = check_weights_dir(weights_dir)
    [problem] = report.files["bigvgan_v2_44k"].problems
    assert words in problem
    (weights_dir / "ext_weights" / "bigvgan_v2_44khz_128band_512x" / "config.json").write_text(V2_CONFIG)
    assert check_weights_dir(weights_dir).files["bigvgan_v2_44k"].problems == ()


def test_a_folder_named_outside_utf8_or_left_empty_is_said_so(tmp_path, capsys):
    """PyTorch's mapped loading and safetensors take UTF-8 paths only: under a folder named in
    Latin-1 every intact file was reported damaged, to be downloaded again. An empty --weights
    (an unset shell variable) checked the current folder."""
    latin1 = os.fsdecode(os.fsencode(tmp_path) + b"/Gew\xe9chte")
    os.mkdir(latin1)
    with pytest.raises(CheckpointError, match=r"Gew\\xe9chte has a name that is not UTF-8 text"):
        weights_folder(latin1)
    assert cli_main(["weights", "check", ""]) == 2
    assert "The weights folder is empty" in capsys.readouterr().err


@pytest.mark.parametrize("manifest", ['{"state_dict": 5}', "[1, 2]", '{"state_dict": [{"shape": [1]}]}'])
def test_a_manifest_of_another_layout_is_said_not_raised(weights_dir, tmp_path, capsys, manifest):
    """A manifest folder holding JSON of another layout raised TypeError through `weights check`."""
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "vae_16k.json").write_text(manifest)
    assert cli_main(["weights", "check", str(weights_dir), "--manifests", str(folder)]) == 1
    said = capsys.readouterr()
    assert "vae_16k.json is not one StepFoley wrote" in said.out + said.err and "Traceback" not in said.err


def test_checking_a_training_checkpoint_says_what_loading_it_would():
    """A .pth with entries that are not tensors (an epoch, a config) was "ok" to `weights check`
    (non-tensors were skipped) and refused by the loader, after every other network had loaded."""
    import tempfile
    from pathlib import Path

    from stepfoley.engine.checkpoints import load_state_dict_file
    from stepfoley.engine.weights import tensor_shapes

    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "synchformer_state_dict.pth"
        torch.save({"vfeat_extractor.w": torch.ones(2), "epoch": 12}, path)
        for read in (load_state_dict_file, tensor_shapes):
            with pytest.raises(CheckpointError, match=r"entries epoch are not tensors\): it looks like a training"):
                read(path)


def test_something_there_under_an_official_name_but_not_that_file_is_said_to_be(weights_dir):
    """A zip not unpacked under BigVGAN's or CLIP's folder name, a link left dangling, a folder
    under a file's name: each was "missing", and the user looked for a name that was there."""
    import shutil

    ext = weights_dir / "ext_weights"
    for folder in ("bigvgan_v2_44khz_128band_512x", "DFN5B-CLIP-ViT-H-14-384", "../DFN5B-CLIP-ViT-H-14-384"):
        shutil.rmtree(ext / folder, ignore_errors=True)
        if folder[0] != ".":
            (ext / folder).write_bytes(b"PK\x03\x04 a zip")
    (ext / "v1-44.pth").unlink(missing_ok=True)
    (ext / "v1-44.pth").mkdir()
    (ext / "synchformer_state_dict.pth").unlink()
    (ext / "synchformer_state_dict.pth").symlink_to(weights_dir / "gone.pth")
    text = check_weights_dir(weights_dir).text()
    assert "ext_weights/v1-44.pth  [44.1 kHz mel VAE (audio <-> latent)]: missing: it is a folder, where a file is " \
           "expected" in text
    assert "missing: it is a file, where a folder is expected (a download to unpack?)" in text
    assert f"missing: it is a link to {weights_dir / 'gone.pth'}, which does not exist" in text
    assert text.count("where a folder is expected") == 2  # BigVGAN's and CLIP's
    # CLIP's zip left beside weights/ instead: named where it is
    (ext / "DFN5B-CLIP-ViT-H-14-384").unlink()
    (weights_dir / "DFN5B-CLIP-ViT-H-14-384").write_bytes(b"PK\x03\x04 a zip")
    assert ("\n  DFN5B-CLIP-ViT-H-14-384  [CLIP image/text encoder folder (apple/DFN5B-CLIP-ViT-H-14-384, open_clip "
            "format)]: missing: it is a file, where a folder") in check_weights_dir(weights_dir).text()


@pytest.mark.parametrize("action", ["check", "convert"])
def test_an_empty_manifests_folder_is_refused_not_read_as_the_packaged_ones(weights_dir, capsys, action):
    """`--manifests "$UNSET"` checked against the packaged manifests without a word."""
    assert cli_main(["weights", action, str(weights_dir), "--manifests", ""]) == 2
    said = capsys.readouterr()
    assert "--manifests is empty; give the folder of the weight manifests" in said.err and said.out == ""
    assert not list((weights_dir / "ext_weights").glob("*.safetensors"))  # convert copied nothing
    with pytest.raises(CheckpointError, match="The manifests folder is empty"):
        check_weights_dir(weights_dir, manifests_dir="")


def test_a_file_that_fails_part_way_through_its_hash_is_named_not_raised(tmp_path, capsys):
    """`weights check --hash` turned only a permission error into words: any other failure of the
    read (EIO from a failing disk) was a traceback. /proc/self/mem is a regular file whose first
    read fails with EIO; the loader reads the .safetensors copy beside it, so only the hash reads it."""
    if not os.path.isfile("/proc/self/mem"):
        pytest.skip("needs Linux's /proc")
    root = tmp_path / "weights"
    save(manifest_shaped("vae_16k"), root / "ext_weights" / "v1-16.pth")
    convert_weights_dir(root, log=lambda line: None)
    copy = root / "ext_weights" / "v1-16.safetensors"
    save_file(load_file(copy), copy)  # a copy that records no source: trusted whatever the .pth is
    pth = root / "ext_weights" / "v1-16.pth"
    pth.unlink()
    pth.symlink_to("/proc/self/mem")
    assert cli_main(["weights", "check", "--hash", str(root)]) == 1
    said = capsys.readouterr()
    assert f"{pth} could not be read to its end (Input/output error)" in said.out, said
    assert "Traceback" not in said.err


def folded_bigvgan_16k():
    """bigvgan_16k's tensors with weight norm folded into plain `.weight` (NVIDIA's loader takes them)."""
    folded = {}
    for e in json.loads(manifest_path("bigvgan_16k").read_text())["state_dict"]:
        if e["key"].endswith(".parametrizations.weight.original0"):
            continue
        folded[e["key"].replace(".parametrizations.weight.original1", ".weight")] = torch.zeros(()).expand(e["shape"])
    return folded


@pytest.mark.parametrize("action, manifest, words", [
    ("check", "{not json", "Cannot read the weights manifest {}"),
    ("check", '{"state_dict": [{"key": 5, "shape": [1]}]}', "The weights manifest {} is not one StepFoley wrote"),
    ("check", "[1, 2]", "The weights manifest {} is not one StepFoley wrote"),
    ("convert", None, "not converted: The weights manifest {} is not one StepFoley wrote"),
], ids=["check-not-json", "check-key-not-text", "check-a-list", "convert-dropped-keys-not-a-list"])
def test_a_broken_manifest_of_a_folded_vocoder_is_named_not_raised(tmp_path, capsys, action, manifest, words):
    """A vocoder with weight norm folded is compared with its manifest's entries read apart, and
    convert reads the keys the loader drops apart too: a broken --manifests file there was a
    traceback (JSONDecodeError, AttributeError, TypeError) where every other reading named it."""
    root = tmp_path / "weights"
    save(manifest_shaped("vae_16k"), root / "ext_weights" / "v1-16.pth")
    save({"generator": folded_bigvgan_16k()}, root / "ext_weights" / "best_netG.pt")
    folder = tmp_path / "manifests"
    folder.mkdir()
    (folder / "vae_16k.json").write_text(manifest_path("vae_16k").read_text())
    broken = folder / "bigvgan_16k.json"
    if manifest is None:  # its entries fit; what it says the loader drops is not a list
        manifest = json.dumps({**json.loads(manifest_path("bigvgan_16k").read_text()),
                               "keys_dropped_or_ignored_on_load": 5})
    broken.write_text(manifest)
    assert cli_main(["weights", action, str(root), "--manifests", str(folder)]) == 1
    said = capsys.readouterr()
    assert words.format(broken) in said.out, said
    assert "Traceback" not in said.err
    if action == "convert":  # the other files are still converted
        assert (root / "ext_weights" / "v1-16.safetensors").is_file()
        assert not (root / "ext_weights" / "best_netG.safetensors").exists()
