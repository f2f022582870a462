"""engine.features.clip against clip.safetensors in the golden folder (README, "CLIP towers and
tokenizer"): open_clip 3.3.0's DFN5B towers at reduced width as MMAudio patches them, and the
token ids open_clip's own tokenizer gives for 12 tricky captions.

The towers are loaded from a folder laid out like apple/DFN5B-CLIP-ViT-H-14-384 (weights plus
open_clip_config.json), the captions go through our tokenizer with the vocabulary StepFoley
ships, and the frames through encode_clip_frames: the path the engine takes."""

from __future__ import annotations

import fnmatch
import json

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from conftest import REPO, golden_dir
from stepfoley.engine.features.clip import (SHIPPED_VOCAB, VOCAB_FILE, ClipTokenizer, encode_clip_frames,
                                            find_bpe_vocab, load_clip)
from stepfoley.engine.features.mmaudio_features import MMAudioTextEncoder

FIXTURE = "clip.safetensors"


@pytest.fixture(scope="module")
def golden():
    d = golden_dir()
    if not (d / FIXTURE).is_file():
        pytest.skip(f"{FIXTURE} not found in {d} (set STEPFOLEY_GOLDEN_DIR)")
    return d


@pytest.fixture(scope="module")
def fixture(golden):
    path = golden / FIXTURE
    tensors = load_file(str(path))
    with safe_open(str(path), "pt") as f:
        meta = f.metadata()
    groups = {"weights": {}, "inputs": {}, "outputs": {}}
    for key, value in tensors.items():
        group, name = key.split(".", 1)
        groups[group][name] = value
    return groups, meta


@pytest.fixture(scope="module")
def clip_folder(fixture, tmp_path_factory):
    """The fixture's weights and config written as the DFN5B download holds them."""
    groups, meta = fixture
    folder = tmp_path_factory.mktemp("DFN5B-CLIP-ViT-H-14-384")
    config = {k: v for k, v in json.loads(meta["config"]).items() if k != "official"}
    (folder / "open_clip_config.json").write_text(json.dumps({"model_cfg": config}))
    torch.save(groups["weights"], folder / "open_clip_pytorch_model.bin")
    return folder


def tolerance(meta) -> dict:
    tol = json.loads(meta["tolerance"])
    return {"atol": tol["atol"], "rtol": tol["rtol"]}


def test_shipped_vocabulary_gives_open_clips_token_ids(fixture):
    groups, meta = fixture
    captions = json.loads(meta["captions"])
    assert len(captions) == 12
    vocab = find_bpe_vocab()  # no CLIP folder: the copy StepFoley ships
    assert vocab == SHIPPED_VOCAB
    tokenizer = ClipTokenizer(vocab)
    assert tokenizer.vocab_size == json.loads(meta["config"])["text_cfg"]["vocab_size"] == 49408
    expected = groups["inputs"]["tokens"].long()
    mine = tokenizer(captions)
    for caption, row, ref in zip(captions, mine, expected):
        assert row.tolist() == ref.tolist(), f"{FIXTURE} tokens of {caption!r}"


def test_text_features_match(fixture, clip_folder):
    groups, meta = fixture
    model = load_clip(clip_folder)
    encoder = MMAudioTextEncoder(model, ClipTokenizer(find_bpe_vocab(clip_folder)))
    features = encoder.encode(json.loads(meta["captions"]))  # captions -> tokens -> (12, 77, 32)
    torch.testing.assert_close(features, groups["outputs"]["text"], **tolerance(meta),
                               msg=lambda m: f"{FIXTURE} outputs.text: {m}")


def test_image_features_match(fixture, clip_folder):
    groups, meta = fixture
    model = load_clip(clip_folder)
    frames = groups["inputs"]["frames"]  # (1, T, 3, 384, 384) in [0, 1] on a 378 px config
    assert frames.shape[-1] == 384 and model.cfg.image_size == 378
    features = encode_clip_frames(model, frames[0], batch_frames=2)
    torch.testing.assert_close(features, groups["outputs"]["image"], **tolerance(meta),
                               msg=lambda m: f"{FIXTURE} outputs.image: {m}")


def test_the_vocabulary_is_package_data_with_its_license():
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    with open(REPO / "pyproject.toml", "rb") as f:
        patterns = tomllib.load(f)["tool"]["setuptools"]["package-data"]["stepfoley.engine"]
    engine = REPO / "engine"
    for name in (VOCAB_FILE, "LICENSE"):
        relative = (SHIPPED_VOCAB.parent / name).relative_to(engine.resolve()).as_posix()
        assert any(fnmatch.fnmatch(relative, p) for p in patterns), relative
    notice = (SHIPPED_VOCAB.parent / "LICENSE").read_text()
    assert "open-clip-torch 3.3.0" in notice and notice.count("Permission is hereby granted") == 2
