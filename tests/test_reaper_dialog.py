"""The ReaImGui dialog, through the stand-in of tests/reaper_fake/imgui/imgui.lua (the ReaImGui
0.9 functions StepFoley uses, with their signatures; the user's clicks and typing come from
the scenario, one per frame): the engine's defaults as hints, the method list, the caption
history, the layers with a checkbox each (stored as the tracks' roles), validation inside the
window, Escape. Without ReaImGui the plain GetUserInputs dialog is used (the other tests)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf

sys.path.insert(0, str(Path(__file__).resolve().parent / "reaper_fake"))
import harness as h  # noqa: E402

pytestmark = pytest.mark.skipif(h.LUA is None, reason="lua5.4 is not installed (apt-get install lua5.4)")


@pytest.fixture
def world(tmp_path):
    return h.make_world(tmp_path)


def widgets(frame: list, kind: str) -> dict:
    return {w["label"]: w for w in frame if w["kind"] == kind}


def test_generate_with_the_imgui_dialog(world):
    sc = h.scenario(world, dialog=[], imgui=[
        {"type": "caption", "text": "rain on a tin roof"},
        {"type": "alpha", "text": "2.5"},
        {"combo": "method", "select": "independent"},
        {"click": "Generate"},
    ])
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == [] and result["dialogs"] == []  # no GetUserInputs
    request = h.job_request(result)
    assert request["caption"] == "rain on a tin roof" and request["alpha"] == 2.5
    assert request["method"] == "independent" and "steps" not in request and "beta" not in request
    first = result["imgui_frames"][0]
    inputs = widgets(first, "InputTextWithHint")
    assert inputs["Alpha: text guidance (empty = 3)##alpha"]["hint"] == "3"  # the engine's default
    assert inputs["Steps (empty = 3)##steps"]["hint"] == "3" and inputs["Seed (empty = random)##seed"]["hint"] == "random"
    assert widgets(first, "BeginCombo")["Method##method"]["value"] == "model default (nag)"
    texts = [w["label"] for w in first if w["kind"] in ("TextWrapped", "TextDisabled")]
    assert "StepFoley engine: model standin on cpu. Empty fields use the model's defaults." in texts
    # the method list opened in frame 3: the default first, then the engine's methods (no reference)
    options = [w["label"].split("##")[0] for w in result["imgui_frames"][2] if w["kind"] == "Selectable"]
    assert options == ["model default (nag)", "independent", "negative_prompt", "nag", "text_boost", "dual"]
    assert [h.take_meta(t)["caption"] for t in h.new_tracks(result)[0]["items"][0]["takes"]] == ["rain on a tin roof"]
    assert json.loads(result["extstate"]["StepFoley"]["last_params"]) == {"method": "independent", "alpha": "2.5"}


def test_layer_checkboxes_choose_and_remember_the_negatives(world):
    music = world["tmp"] / "music.wav"
    music_samples = h.write_foley_wav(music, 12.0, h.SR, seed=9)
    extra = [{"name": "Music", "items": [{"position": 0.0, "length": 12.0, "takes": [{"file": str(music)}]}]}]
    sc = h.scenario(world, dialog=[], extra_tracks=extra, imgui=[
        {"type": "caption", "text": "steps"}, {"check": "layer1"}, {"check": "layer2"}, {"click": "Generate"}])
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    boxes = widgets(result["imgui_frames"][0], "Checkbox")
    assert boxes == {"wind (StepFoley)##layer1": {"kind": "Checkbox", "label": "wind (StepFoley)##layer1", "value": True},
                     "Music##layer2": {"kind": "Checkbox", "label": "Music##layer2", "value": False}}
    request = h.job_request(result)
    mix, _ = sf.read(request["existing_mix"])
    np.testing.assert_allclose(mix[:, 0], music_samples[h.frames(3.0):h.frames(5.5)], atol=1 / 2**22)
    by_name = {t["name"]: t for t in result["tracks"]}
    assert by_name["wind"]["ext"]["stepfoley_negative"] == "0" and by_name["Music"]["ext"]["stepfoley_negative"] == "1"
    assert result["undo"] == ["StepFoley: choose negative layers", 'StepFoley: add Foley track "steps"']


def test_ticks_made_before_switching_to_no_negatives_are_not_kept(world):
    """Unticked, then "none" chosen: the hidden untick was stored, and that layer was left out
    of every later generation without the artist seeing it."""
    sc = h.scenario(world, dialog=[], imgui=[{"type": "caption", "text": "steps"}, {"check": "layer1"},
                                             {"radio": "negatives-none"}, {"click": "Generate"}])
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == [] and "existing_mix" not in h.job_request(result)
    wind = next(t for t in result["tracks"] if t["name"] == "wind")
    assert "stepfoley_negative" not in wind["ext"]
    assert result["undo"] == ['StepFoley: add Foley track "steps"']


def test_a_bad_value_is_explained_in_the_window(world):
    sc = h.scenario(world, dialog=[], imgui=[
        {"type": "caption", "text": "steps"}, {"type": "steps", "text": "500"}, {"click": "Generate"},
        {"type": "steps", "text": "2"}, {"click": "Generate"}])
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    shown = [w["label"] for w in result["imgui_frames"][3] if w["kind"] == "TextWrapped"]
    assert '! Steps must be a whole number between 1 and 200, got "500".' in shown
    assert h.job_request(result)["steps"] == 2


@pytest.mark.parametrize("how", [{"key": "Escape"}, {"click": "Cancel"}, {"close": True}])
def test_cancelling_the_window_does_nothing(world, how):
    result = h.run_scenario(world["tmp"], h.scenario(world, dialog=[], imgui=[{"type": "caption", "text": "x"}, how]))
    assert result["messages"] == [] and h.generation_commands(result) == [] and result["renders"] == []
    assert h.new_tracks(result) == [] and "caption_history" not in result["extstate"]["StepFoley"]


def test_caption_history_in_the_window(world):
    extstate = h.extstate(world, caption_history=json.dumps(["rain", "door slam"]))
    sc = h.scenario(world, dialog=[], extstate=extstate,
                    imgui=[{"combo": "history", "select": "door slam"}, {"click": "Generate"}])
    result = h.run_scenario(world["tmp"], sc)
    assert widgets(result["imgui_frames"][0], "InputTextWithHint")["Caption (what you hear)##caption"]["value"] == "rain"
    assert h.job_request(result)["caption"] == "door slam"
    assert json.loads(result["extstate"]["StepFoley"]["caption_history"]) == ["door slam", "rain"]


def test_regenerate_opens_the_window_with_the_stored_parameters(world):
    meta = {"caption": "door slam", "method": "independent", "alpha": 5.0, "seed": 11}
    layer = {"name": "door", "ext": {"stepfoley": "1"}, "items": [{"position": 3.0, "length": 2.5, "selected": True,
             "takes": [{"file": str(world["foley"]), "ext": {"stepfoley_metadata": json.dumps(meta)}}]}]}
    sc = h.scenario(world, dialog=[], extra_tracks=[layer], actions=[{"script": h.REGENERATE}],
                    imgui=[{"click": "Generate"}])
    result = h.run_scenario(world["tmp"], sc)
    first = result["imgui_frames"][0]
    inputs = widgets(first, "InputTextWithHint")
    assert inputs["Caption (what you hear)##caption"]["value"] == "door slam"
    assert inputs["Alpha: text guidance (empty = 3)##alpha"]["value"] == "5"
    assert widgets(first, "BeginCombo")["Method##method"]["value"] == "independent"
    request = h.job_request(result)
    assert request["method"] == "independent" and request["alpha"] == 5.0
