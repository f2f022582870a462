"""Every earlier layer reaches NAG: the WAV the engine receives (`existing_mix`) is what the
user hears of the chosen layers over the region, as one file, checked sample by sample; muted
and inactive material is left out of it and of `previous_captions`; every solo, mute, render
and preference setting the bounce touches is put back.

Runs the Lua actions under the fake `reaper` (tests/reaper_fake/), whose "selected tracks via
master" render writes one file per track, as REAPER does (User Guide 21.5)."""

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

SR = h.SR
T0, T1 = 3.0, 5.5
LSB24 = 1 / 2**23  # the bounce is a 24-bit WAV


@pytest.fixture
def world(tmp_path):
    return h.make_world(tmp_path)


def region(samples: np.ndarray, item_pos: float = 0.0) -> np.ndarray:
    """The part of a source played over [T0, T1) by an item at item_pos starting at the source's start."""
    return samples[h.frames(T0 - item_pos):h.frames(T1 - item_pos)]


def read_stem(path: str) -> np.ndarray:
    wave, sr = sf.read(path)
    assert sr == SR
    return wave


def assert_mix(mix_path: str, expected_mono: np.ndarray):
    mix, sr = sf.read(mix_path)
    assert sr == SR and mix.shape == (h.frames(T1 - T0), 2)
    for channel in (0, 1):
        np.testing.assert_allclose(mix[:, channel], expected_mono, rtol=0, atol=LSB24)


@pytest.mark.parametrize("layers", [3, 4])
def test_every_earlier_layer_reaches_the_engine(world, layers):
    # generate layer after layer over the same selection: wind is layer 1, each generated
    # stem becomes the next layer; generation k must receive the sum of all k earlier layers
    n_generations = layers - 1
    captions = [f"layer {k}" for k in range(2, layers + 1)]
    dialog = [h.answers(caption=c, seed=str(10 + k), steps="2")[0] for k, c in enumerate(captions)]
    actions = [{"script": h.MAIN}] + [{"script": h.MAIN, "after_idle": True}] * (n_generations - 1)
    result = h.run_scenario(world["tmp"], h.scenario(world, dialog=dialog, actions=actions), timeout=120)
    assert result["messages"] == [] and len(result["undo"]) == n_generations
    requests = h.job_requests(result)
    assert len(requests) == n_generations
    stems = [read_stem(t["items"][0]["takes"][0]["source_file"]) for t in h.new_tracks(result)]
    assert [t["name"] for t in h.new_tracks(result)] == captions  # stacked in order
    earlier = [region(world["foley_samples"])]
    earlier_captions = ["wind in the trees"]
    for k, request in enumerate(requests):
        assert request["previous_captions"] == earlier_captions
        assert_mix(request["existing_mix"], np.sum(earlier, axis=0))
        earlier.append(stems[k])
        earlier_captions = earlier_captions + [captions[k]]
    assert len(earlier) == layers
    h.assert_project_untouched(result)


def test_the_mix_is_what_the_user_hears(world):
    """Volumes, fades, FX, folders and lanes count; muted, soloed-away and non-playing material
    does not; the user's solo, solo defeat, master mute and solo-in-front come back."""
    tmp = world["tmp"]
    wav = {}
    for seed, name in enumerate(["rain", "steps", "door", "music", "dialog", "birds", "lane0", "lane1", "drip"], 20):
        wav[name] = tmp / f"{name}.wav"
        wav[name + "_samples"] = h.write_foley_wav(wav[name], 8.0, SR, seed=seed)
    fade_item = {"position": 2.5, "length": 6.0, "vol": 0.8, "fadein": 1.0, "fadeout": 0.5}
    tracks = [
        # wind: track volume 0.5, item volume 0.8, a 1 s fade-in from 2.5 s, take volume 0.9
        h.foley_track("wind", world["foley"], "wind in the trees", position=2.5, length=6.0, vol=0.5,
                      item={"vol": 0.8, "fadein": 1.0, "fadeout": 0.5}),
        # rain: its FX (a gain of 0.25) count; its second, muted item does not
        {**h.foley_track("rain", wav["rain"], "rain", fx_gain=0.25)},
        h.foley_track("steps", wav["steps"], "muted steps", mute=True),  # muted track
        {"name": "Closed folder", "folderdepth": 1, "mute": True, "items": []},
        h.foley_track("door", wav["door"], "door in a muted folder", folderdepth=-1),
        h.foley_track("Music", wav["music"], None, solo=1),  # the user had soloed the music
        h.foley_track("Dialog", wav["dialog"], None, solo_defeat=True),
        {"name": "Foley bus", "folderdepth": 1, "vol": 0.5, "items": []},
        h.foley_track("birds", wav["birds"], "birds", folderdepth=-1),
        {"name": "lanes", "ext": {"stepfoley": "1"}, "freemode": 2, "items": [
            {"position": 0.0, "length": 8.0, "lane_plays": 0, "takes": [
                {"file": str(wav["lane0"]), "ext": {"stepfoley_metadata": json.dumps({"caption": "lane off"})}}]},
            {"position": 0.0, "length": 8.0, "lane_plays": 1, "takes": [
                {"file": str(wav["lane1"]), "ext": {"stepfoley_metadata": json.dumps({"caption": "lane on"})}}]}]},
    ]
    tracks[0]["items"][0]["takes"][0]["vol"] = 0.9
    tracks[1]["items"].append({"position": 3.0, "length": 1.0, "mute": True, "takes": [
        {"file": str(wav["drip"]), "ext": {"stepfoley_metadata": json.dumps({"caption": "muted drip"})}}]})
    # left on a hidden lane when the track's fixed lanes were switched off: it does not play
    tracks[1]["items"].append({"position": 2.0, "length": 4.0, "hidden_lane": True, "takes": [
        {"file": str(wav["drip"]), "ext": {"stepfoley_metadata": json.dumps({"caption": "hidden drip"})}}]})
    sc = h.scenario(world, master={"vol": 0.8, "fx_gain": 0.5, "mute": True}, toggles={"40745": 1})
    sc["tracks"] = sc["tracks"][:1] + tracks
    result = h.run_scenario(tmp, sc)
    assert result["messages"] == []
    request = h.job_request(result)
    assert request["previous_captions"] == ["wind in the trees", "rain", "birds", "lane on"]

    t = T0 + np.arange(h.frames(T1 - T0)) / SR  # the project time of each bounced sample
    into, left = t - fade_item["position"], fade_item["position"] + fade_item["length"] - t
    fade = np.where(into < 1.0, into / 1.0, 1.0) * np.where(left < 0.5, left / 0.5, 1.0)
    wind = region(world["foley_samples"], 2.5) * 0.5 * 0.8 * 0.9 * fade
    expected = 0.8 * (wind + region(wav["rain_samples"]) * 0.25 + region(wav["birds_samples"]) * 0.5
                      + region(wav["lane1_samples"]))
    assert_mix(request["existing_mix"], expected)

    # everything the bounce touched is back
    by_name = {tr["name"]: tr for tr in result["tracks"]}
    assert by_name["Music"]["solo"] == 1 and by_name["Dialog"]["solo_defeat"] is True
    assert all(tr["solo"] == 0 for name, tr in by_name.items() if name != "Music")
    assert by_name["steps"]["mute"] is True and by_name["Closed folder"]["mute"] is True
    assert result["master"] == {"fxen": 1, "mute": True, "vol": 0.8}
    assert result["toggles"] == {"40745": 1}
    h.assert_project_untouched(result)


def test_a_master_fader_pulled_down_to_silence_does_not_silence_the_layers(world):
    """The master fader at -inf made the layers' bounce silent, and the track was made negating
    nothing, without a word. For the bounce it now stands at unity (the engine hears the layers at
    its own level) and comes back; a fader above -40 dB stays (test_the_mix_is_what_the_user_hears)."""
    result = h.run_scenario(world["tmp"], h.scenario(world, master={"vol": 0.0}))
    assert result["messages"] == []
    assert_mix(h.job_request(result)["existing_mix"], region(world["foley_samples"]))
    assert result["master"]["vol"] == 0.0
    assert "were silent in their bounce" not in result["console"]
    h.assert_project_untouched(result)


def test_layers_silent_in_their_bounce_are_said_to_be(world):
    """Layers that play but are silent over the region (automation or an FX can do that where the
    bounce cannot see it): the engine makes the track as a first track and says so in its
    metadata, and the user is told why nothing was negated."""
    silent = world["tmp"] / "silent.wav"
    sf.write(silent, np.zeros(h.frames(12.0)), SR, subtype="PCM_24")
    sc = h.scenario(world)
    sc["tracks"][1] = h.foley_track("wind", silent, "wind in the trees")
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == [] and "existing_mix" in h.job_request(result)
    assert "the layers to negate were silent in their bounce" in result["console"]
    assert len(h.new_tracks(result)) == 1


def test_muted_layers_are_neither_bounced_nor_named(world):
    extra = [h.foley_track("steps", world["foley"], "muted steps", mute=True)]
    sc = h.scenario(world, extra_tracks=extra)
    sc["tracks"][1]["items"][0]["mute"] = True  # wind's only item is muted too
    result = h.run_scenario(world["tmp"], sc)
    request = h.job_request(result)
    assert "existing_mix" not in request and request["previous_captions"] == []
    assert result["renders"] == []


def pieces(world, name: str, captions: list[str]) -> dict:
    """A StepFoley track whose item over [T0, T1) was split into one piece per caption, each
    playing on where the one before stopped (a split copies the take's P_EXT into each piece)."""
    d = (T1 - T0) / len(captions)
    items = [{"position": T0 + i * d, "length": d, "takes": [{"file": str(world["foley"]), "startoffs": i * d,
              "ext": {"stepfoley_metadata": json.dumps({"caption": c})}}]} for i, c in enumerate(captions)]
    return {"name": name, "ext": {"stepfoley": "1"}, "items": items}


def test_a_split_layer_names_its_caption_once(world):
    # 70 pieces of one layer: one caption, not 70 (with 71 the engine refuses: at most 64)
    steps = pieces(world, "steps", ["footsteps on gravel"] * 70)
    result = h.run_scenario(world["tmp"], h.scenario(world, extra_tracks=[steps]))
    assert result["messages"] == []
    assert h.job_request(result)["previous_captions"] == ["wind in the trees", "footsteps on gravel"]
    assert len(h.new_tracks(result, known=("Picture", "wind", "steps"))) == 1


def test_previous_captions_stop_at_the_engines_limit(world):
    # 70 layers with captions of their own, and wind: the first 64 (the engine's bound) in
    # track order, each once
    captions = [f"sound {k}" for k in range(35)]
    layers = pieces(world, "many", [c for c in captions for _ in range(2)])
    result = h.run_scenario(world["tmp"], h.scenario(world, extra_tracks=[layers, pieces(world, "more", [
        f"sound {k}" for k in range(35, 70)])]))
    assert result["messages"] == []
    previous = h.job_request(result)["previous_captions"]
    assert previous == ["wind in the trees"] + [f"sound {k}" for k in range(63)]
    assert "64 of the 71" in result["console"]
    assert len(h.new_tracks(result, known=("Picture", "wind", "many", "more"))) == 1


def test_captions_the_text_encoder_cannot_hear_are_said_to_be_left_out(world):
    """negative_prompt steers away from the layers' captions, as many as its text encoder hears
    whole (75 tokens); the engine counts the others in its metadata, and the user is told."""
    from stepfoley.engine.embedded.text import TEXT_SEQ_LEN, WordPieceTokenizer, packaged_model_dir
    from stepfoley.engine.session import fit_captions

    captions = [f"layer {k} of distant church bells ringing over a windy hill" for k in range(12)]
    dialog = h.answers(method="negative_prompt")
    result = h.run_scenario(world["tmp"], h.scenario(world, dialog=dialog, extra_tracks=[pieces(world, "bells",
                                                                                               captions)]))
    assert result["messages"] == []
    sent = h.job_request(result)["previous_captions"]
    assert sent == ["wind in the trees", *captions]
    tokenizer = WordPieceTokenizer(packaged_model_dir() / "vocab.txt")
    _, left_out = fit_captions(sent, lambda text: len(tokenizer.content_ids(text)), TEXT_SEQ_LEN - 2)
    assert left_out > 0
    assert f"{left_out} of the earlier layers' captions did not fit in what the text encoder reads" in result["console"]


def test_a_failing_render_restores_everything(world):
    # the user cancels REAPER's render window: nothing is written; StepFoley must say so and
    # still put back every setting it changed
    sc = h.scenario(world, toggles={"40745": 1})
    sc["tracks"][1]["solo_defeat"] = True
    sc["tracks"].append(h.foley_track("Music", world["foley"], None, solo=2))
    sc["tracks"][1]["selected"] = True
    result = h.run_scenario(world["tmp"], dict(sc, render_cancelled=True))
    [msg] = result["messages"]
    assert "Could not bounce" in msg["message"]
    assert h.generation_commands(result) == [] and h.new_tracks(result) == []
    by_name = {tr["name"]: tr for tr in result["tracks"]}
    assert by_name["Music"]["solo"] == 2 and by_name["wind"]["solo"] == 0 and by_name["wind"]["solo_defeat"] is True
    assert result["toggles"] == {"40745": 1}
    assert result["modal_prompts"] == ["render cancelled"]
    h.assert_render_settings_restored(dict(result, modal_prompts=[]))


def test_a_render_cut_short_is_said_as_the_renders_fault(world):
    """REAPER may return before its file is whole (the scripting notes: check its length): the
    half file went to the engine, which refused it in words about a file cut short."""
    result = h.run_scenario(world["tmp"], dict(h.scenario(world), render_cut_short=0.5))
    [msg] = result["messages"]
    assert msg["message"].startswith("Could not bounce the layers to negate: the render holds 1.250 s of the 2.500 s")
    assert h.generation_commands(result) == [] and h.new_tracks(result) == []
    h.assert_render_settings_restored(result)


@pytest.mark.parametrize("how", [{"render_cut_short": 0.5}, {"render_cancelled": True}])
def test_a_bounce_that_failed_leaves_no_job_folder_behind(world, how):
    """No job ran, so its folder holds nothing for support: the half bounce of a full disk stayed
    there (and the disk full) until a generation days later pruned it."""
    sc = dict(h.scenario(world), **how)
    sc["extstate"] = h.extstate(world, keep_job_files="0")
    result = h.run_scenario(world["tmp"], sc)
    [msg] = result["messages"]
    assert msg["message"].startswith("Could not bounce the layers to negate: ")
    assert list((world["proj"] / "StepFoley" / "jobs").iterdir()) == []
    # kept when the settings say to keep job files
    sc["extstate"] = h.extstate(world, keep_job_files="1")
    result = h.run_scenario(world["tmp"], sc)
    assert len(list((world["proj"] / "StepFoley" / "jobs").iterdir())) == 1


def _assert_mutes_restored(result, track_name: str):
    # muted for the render (outside any undo block, as every bounce setting is), then put back
    h.assert_render_settings_restored(result)
    track = next(tr for tr in result["tracks"] if tr["name"] == track_name)
    assert [(i["mute"], i["mute_solo"]) for i in track["items"]] == [(False, 0)]


def _bounced(result) -> tuple[np.ndarray, int, int]:
    request = h.job_request(result)
    mix, sr = sf.read(request["existing_mix"])
    assert sr == SR
    return mix[:, 0], h.frames(request["region"]["project_start"]), h.frames(request["region"]["project_end"])


def test_a_chosen_folder_does_not_let_the_unchosen_tracks_inside_it_into_the_bounce(world):
    """Soloing a folder parent makes the tracks inside it heard: with negatives "selection", an
    item picked on a folder track brings only itself, not the unpicked items of its child."""
    tmp = world["tmp"]
    child = h.write_foley_wav(tmp / "child.wav", 12.0, SR, seed=9)
    folder = h.foley_track("Folder FX", world["foley"], "wind in the trees")
    folder["folderdepth"] = 1
    folder["items"][0]["selected"] = True
    inside = {"name": "Child dialogue", "folderdepth": -1,
              "items": [{"position": 0.0, "length": 12.0, "takes": [{"file": str(tmp / "child.wav")}]}]}
    sc = h.scenario(world, dialog=h.answers(negatives="selection"))
    sc["tracks"] = [sc["tracks"][0], folder, inside]
    result = h.run_scenario(tmp, sc)
    mix, a, b = _bounced(result)
    np.testing.assert_allclose(mix, world["foley_samples"][a:b], rtol=0, atol=LSB24)
    assert np.abs(child[a:b]).max() > 0.1
    _assert_mutes_restored(result, "Child dialogue")


@pytest.mark.parametrize("parent_plays", [False, True], ids=["parent silent", "parent heard"])
def test_a_folder_parents_own_audio_stays_out_of_a_bounce_of_a_layer_inside_it(world, parent_plays):
    """Production dialogue on a folder track, a Foley layer inside it: the bounce solos the layer.
    Whether REAPER then plays the folder parent's own items is not documented; where it does,
    the dialogue was bounced as a negative. They are now silenced for the render either way."""
    tmp = world["tmp"]
    dialogue = h.write_foley_wav(tmp / "dialogue.wav", 12.0, SR, seed=12)
    steps = h.write_foley_wav(tmp / "steps.wav", 12.0, SR, seed=13)
    parent = {"name": "DX", "folderdepth": 1,
              "items": [{"position": 0.0, "length": 12.0, "takes": [{"file": str(tmp / "dialogue.wav")}]}]}
    child = h.foley_track("steps", tmp / "steps.wav", "footsteps on gravel")
    child["folderdepth"] = -1
    sc = h.scenario(world, parent_plays_with_soloed_child=parent_plays)
    sc["tracks"] = [sc["tracks"][0], parent, child]
    result = h.run_scenario(tmp, sc)
    assert h.job_request(result)["previous_captions"] == ["footsteps on gravel"]
    mix, a, b = _bounced(result)
    np.testing.assert_allclose(mix, steps[a:b], rtol=0, atol=LSB24)
    assert np.abs(dialogue[a:b]).max() > 0.1
    _assert_mutes_restored(result, "DX")


def test_replacing_a_layer_inside_a_layers_folder_leaves_it_out_of_its_own_negatives(world):
    tmp = world["tmp"]
    h.write_foley_wav(tmp / "steps.wav", 12.0, SR, seed=11)
    parent = h.foley_track("wind", world["foley"], "wind in the trees")
    parent["folderdepth"] = 1
    child = h.foley_track("steps", tmp / "steps.wav", "footsteps on gravel")
    child["folderdepth"] = -1
    child["items"][0]["selected"] = True
    sc = h.scenario(world, actions=[{"script": h.REPLACE}], dialog=[])
    sc["tracks"] = [sc["tracks"][0], parent, child]
    result = h.run_scenario(tmp, sc)
    assert h.job_request(result)["previous_captions"] == ["wind in the trees"]
    mix, a, b = _bounced(result)
    np.testing.assert_allclose(mix, world["foley_samples"][a:b], rtol=0, atol=LSB24)
    _assert_mutes_restored(result, "steps")


def test_a_looped_section_repeats_the_section_not_the_file_around_it(world):
    """A layer whose take is the section 2.0-3.0 s of its file, looped over 3.0-5.5 s: REAPER
    plays that second again and again (User Guide: Loop source). The fake's render went on
    into the file after the section, so it was a wrong oracle for looped sections."""
    section = {"name": "ticks", "ext": {"stepfoley": "1"}, "items": [{"position": T0, "length": T1 - T0, "loopsrc": 1,
               "takes": [{"file": str(world["foley"]), "section": {"offs": 2.0, "len": 1.0, "rev": False},
                          "ext": {"stepfoley_metadata": json.dumps({"caption": "ticks"})}}]}]}
    sc = h.scenario(world, extra_tracks=[section])
    sc["tracks"][1]["ext"]["stepfoley_negative"] = "0"  # the wind layer left out: only the section is heard
    result = h.run_scenario(world["tmp"], sc)
    assert result["messages"] == []
    one_pass = world["foley_samples"][h.frames(2.0):h.frames(3.0)]
    expected = np.tile(one_pass, 3)[:h.frames(T1 - T0)]
    assert_mix(h.job_request(result)["existing_mix"], expected)


def test_no_bounce_while_reaper_records(world):
    """The bounce is a render, its solos and settings heard by (or ending) a recording that
    started while the dialog was answered: refused in words, nothing set, no folder left."""
    sc = dict(h.scenario(world), play_state=5, extstate=h.extstate(world, keep_job_files="0"))  # recording, playing
    result = h.run_scenario(world["tmp"], sc)
    [msg] = result["messages"]
    assert msg["message"].startswith("REAPER is recording. Stop the recording, then run the action again")
    assert h.generation_commands(result) == [] and h.new_tracks(result) == [] and result["modal_prompts"] == []
    assert list((world["proj"] / "StepFoley" / "jobs").iterdir()) == []
    h.assert_render_settings_restored(result)
    # playing alone is no recording: the track is made
    assert len(h.new_tracks(h.run_scenario(world["tmp"], dict(h.scenario(world), play_state=1)))) == 1
