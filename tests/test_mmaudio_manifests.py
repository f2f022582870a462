"""Each official MMAudio preset, built on the meta device (no memory, no time), has exactly the
state-dict layout of golden manifests/flow_<preset>.json: keys in order, shapes, parameter count."""

import json
from dataclasses import asdict

import pytest
import torch

from conftest import golden_files
from stepfoley.engine.checkpoints import check_against_manifest
from stepfoley.engine.mmaudio import MMAudio, MMAudioConfig, infer_preset

FLOW_MANIFESTS = golden_files("manifests/flow_*.json")


def preset_of(manifest_path):
    return manifest_path.stem[len("flow_"):]


def meta_net(name):
    with torch.device("meta"):
        return MMAudio(MMAudioConfig.preset(name))


def test_every_preset_has_a_manifest(golden):
    assert sorted(preset_of(p) for p in FLOW_MANIFESTS) == sorted(MMAudioConfig.preset_names())


@pytest.mark.parametrize("path", FLOW_MANIFESTS, ids=[p.stem for p in FLOW_MANIFESTS])
def test_preset_matches_manifest_key_for_key(golden, path):
    manifest = json.loads(path.read_text())
    name = preset_of(path)
    config = MMAudioConfig.preset(name)
    assert {k: v for k, v in asdict(config).items() if k != "name"} == manifest["config"]

    net = meta_net(name)
    layout = [(key, list(t.shape)) for key, t in net.state_dict().items()]
    assert layout == [(e["key"], e["shape"]) for e in manifest["state_dict"]]
    assert sum(p.numel() for p in net.parameters()) == manifest["num_parameters"]
    assert len(layout) == manifest["state_dict_num_tensors"]
    assert check_against_manifest(net.state_dict(), path).ok

    # The buffers the reference keeps out of the checkpoint, recomputed here on demand.
    recomputed = manifest["non_persistent_buffers_not_in_checkpoint_layout"]
    assert list(net.latent_rope(config.latent_seq_len, "cpu").shape) == recomputed["latent_rot"]
    assert list(net.clip_rope(config.clip_seq_len, config.latent_seq_len, "cpu").shape) == recomputed["clip_rot"]
    assert list(net.t_embed.frequencies(torch.device("cpu")).shape) == recomputed["t_embed.freqs"]
    assert set(manifest["keys_dropped_or_ignored_on_load"]) == {"t_embed.freqs", "latent_rot", "clip_rot"}


@pytest.mark.parametrize("path", FLOW_MANIFESTS, ids=[p.stem for p in FLOW_MANIFESTS])
def test_infer_preset_recognises_the_manifest_layout(golden, path):
    shapes = {e["key"]: torch.empty(e["shape"], device="meta") for e in json.loads(path.read_text())["state_dict"]}
    assert infer_preset(shapes) == preset_of(path)


def test_unknown_preset_lists_the_known_ones():
    from stepfoley.engine.errors import InvalidInputError

    with pytest.raises(InvalidInputError, match="small_16k.*large_44k_v2"):
        MMAudioConfig.preset("huge_48k")
