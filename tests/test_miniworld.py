import json

import av
import numpy as np
import pytest
import soundfile as sf

from stepfoley.engine.errors import InvalidInputError
from stepfoley.lab.miniworld import VARIANTS, CAPTIONS, SOURCE_KINDS, make_scene, single_source_clip, write_scene

SPF = 640  # samples per frame: 16 kHz / 25 fps


def frame_rms(wave):
    return np.sqrt((wave[: len(wave) // SPF * SPF].reshape(-1, SPF) ** 2).mean(1))


def foreground_centroid(frames):
    """Per-frame centroid (x, y) of pixels that differ from the clip's median frame."""
    f = frames.astype(np.float32).mean(-1)
    mask = np.abs(f - np.median(f, axis=0)) > 20
    ys, xs = np.mgrid[0:64, 0:64]
    count = mask.sum((1, 2)) + 1e-9
    return (mask * xs).sum((1, 2)) / count, (mask * ys).sum((1, 2)) / count


def test_scene_is_deterministic_and_consistent():
    a, b, c = make_scene(11), make_scene(11), make_scene(12)
    assert np.array_equal(a.frames, b.frames) and np.array_equal(a.stems, b.stems) and a.events == b.events
    assert not np.array_equal(a.mixture, c.mixture)
    assert a.frames.shape == (200, 64, 64, 3) and a.frames.dtype == np.uint8
    assert 2 <= len(a.kinds) <= 4 and a.stems.shape == (len(a.kinds), 128000) and a.stems.dtype == np.float32
    np.testing.assert_allclose(a.mixture, a.stems.sum(0), atol=1e-6)
    assert np.abs(a.mixture).max() <= 0.95 + 1e-6
    assert all(np.abs(stem).max() > 0.05 for stem in a.stems)
    assert [e.start_frame for e in a.events] == sorted(e.start_frame for e in a.events)
    assert all(a.kinds[e.source] == e.kind and 0 <= e.start_frame < e.end_frame <= 200 for e in a.events)


def test_kinds_captions_and_bad_requests():
    assert len(SOURCE_KINDS) >= 8 and set(CAPTIONS) == set(SOURCE_KINDS)
    assert all(len(set(paraphrases)) >= 3 for paraphrases in CAPTIONS.values())
    scene = make_scene(3, kinds=["bell", "rain"])
    assert scene.kinds == ("bell", "rain") and scene.captions == (CAPTIONS["bell"], CAPTIONS["rain"])
    assert make_scene(3, n_sources=4).stems.shape[0] == 4
    assert make_scene(3, duration=2.0).frames.shape[0] == 50
    for bad in (dict(kinds=["tuba"]), dict(n_sources=5), dict(kinds=["bell"], n_sources=2), dict(duration=0.1)):
        with pytest.raises(InvalidInputError):
            make_scene(0, **bad)


@pytest.mark.parametrize("kind", ["ball", "pendulum", "bell", "walker"])
def test_impulse_sounds_start_on_their_event_frames(kind):
    clip = single_source_clip(5, kind)
    wave = clip.mixture
    onsets = [e.start_sample for e in clip.events]
    assert len(onsets) >= 3
    # A bell's ring overlaps the next shake, so its rise is smaller than a click's or a thud's.
    rise = 1.5 if kind == "bell" else 3.0
    for onset in onsets:
        after = np.sqrt((wave[onset:onset + 320] ** 2).mean())
        assert after > 0.02, (kind, onset)
        if onset >= 320:
            before = np.sqrt((wave[onset - 320:onset] ** 2).mean())
            assert after > rise * before, (kind, onset)
    # Between events (well after the previous one decays) the stem is quiet where nothing happens.
    if kind in ("ball", "pendulum", "walker"):
        rms = frame_rms(wave)
        event_frames = {e.start_frame + d for e in clip.events for d in range(4)}
        quiet = [rms[f] for f in range(len(rms)) if f not in event_frames]
        assert np.median(quiet) < 0.05 * rms.max()


def test_visual_events_coincide_with_sounds():
    ball = single_source_clip(2, "ball")
    _, y = foreground_centroid(ball.frames)
    for e in ball.events:                      # the ball is at its lowest on impact frames
        f = e.start_frame
        if 1 <= f < 199:
            assert y[f] >= y[f - 1] - 0.3 and y[f] >= y[f + 1] - 0.3, f
    pendulum = single_source_clip(2, "pendulum")
    x, _ = foreground_centroid(pendulum.frames)
    for e in pendulum.events:                  # the bob is at a turning point on click frames
        f = e.start_frame
        if 1 <= f < 199:
            assert (x[f] - x[f - 1]) * (x[f + 1] - x[f]) <= 0.05, f


def test_lamp_beeps_exactly_while_lit():
    clip = single_source_clip(4, "lamp")
    lit = np.zeros(200, bool)
    for e in clip.events:
        lit[e.start_frame:e.end_frame] = True
    assert 0 < lit.sum() < 200
    rms = frame_rms(clip.mixture)
    assert rms[lit].min() > 10 * rms[~lit].max() + 1e-9
    brightness = clip.frames.astype(np.float32).mean((1, 2, 3))
    assert brightness[lit].min() > brightness[~lit].max()


def test_continuous_sounds_follow_their_visuals():
    rain = single_source_clip(6, "rain")
    streak_pixels = np.abs(np.diff(rain.frames.astype(np.float32), axis=0)).mean((1, 2, 3))
    rain_rms = frame_rms(rain.mixture)[1:]
    assert np.corrcoef(streak_pixels, rain_rms)[0, 1] > 0.8
    flag = single_source_clip(6, "flag")
    motion = np.abs(np.diff(flag.frames.astype(np.float32), axis=0)).mean((1, 2, 3))
    assert np.corrcoef(motion, frame_rms(flag.mixture)[1:])[0, 1] > 0.6
    wheel = single_source_clip(6, "wheel")
    speed = wheel.controls[0]["speed"]
    window = 3200  # 0.2 s
    pitches = []
    for start in range(0, len(wheel.mixture) - window + 1, window):
        spectrum = np.abs(np.fft.rfft(wheel.mixture[start:start + window] * np.hanning(window)))
        freqs = np.fft.rfftfreq(window, 1 / 16000)
        low = (freqs > 40) & (freqs < 600)           # the hum's fundamental is its loudest partial
        pitches.append(freqs[low][np.argmax(spectrum[low])])
    speed_per_window = speed.reshape(-1, 5).mean(1)
    assert np.corrcoef(pitches, speed_per_window)[0, 1] > 0.8


def test_kinds_are_distinguishable_by_spectrum_and_timing():
    def profile(wave):
        spectrum = np.abs(np.fft.rfft(wave)) ** 2 + 1e-12
        freqs = np.fft.rfftfreq(len(wave), 1 / 16000)
        edges = np.geomspace(50, 8000, 13)
        bands = np.log([spectrum[(freqs >= lo) & (freqs < hi)].sum() for lo, hi in zip(edges[:-1], edges[1:])])
        shape = (bands - bands.mean()) / bands.std()
        flatness = np.log(np.exp(np.log(spectrum[freqs > 50]).mean()) / spectrum[freqs > 50].mean())
        rms = frame_rms(wave) + 1e-6
        crest = np.log(rms.max() / np.median(rms))          # impulsive vs. sustained
        return np.concatenate([shape, [flatness / 2, crest]])

    sounds = [(k, v) for k in sorted(SOURCE_KINDS) for v in VARIANTS.get(k, (None,))]
    reference = [(sound, profile(single_source_clip(s, sound[0], variant=sound[1]).mixture))
                 for sound in sounds for s in range(4)]
    for sound in sounds:
        for seed in (7, 8):
            probe = profile(single_source_clip(seed, sound[0], variant=sound[1]).mixture)
            nearest = min(reference, key=lambda r: np.sum((r[1] - probe) ** 2))[0]
            assert nearest == sound, (sound, seed)


def test_write_scene_round_trips_and_never_overwrites(tmp_path):
    scene = make_scene(21, n_sources=2, duration=2.0)
    paths = write_scene(scene, tmp_path / "s")
    with av.open(str(paths["video"])) as container:
        assert container.streams.audio and container.streams.audio[0].sample_rate == 16000
        decoded = np.stack([f.to_ndarray(format="rgb24") for f in container.decode(video=0)])
    assert decoded.shape == (50, 64, 64, 3)
    assert np.abs(decoded.astype(int) - scene.frames.astype(int)).mean() < 8
    mixture, sr = sf.read(paths["mixture"], dtype="float32")
    assert sr == 16000 and np.array_equal(mixture, scene.mixture)
    for i, kind in enumerate(scene.kinds):
        stem, _ = sf.read(tmp_path / "s" / f"stem_{i}_{kind}.wav", dtype="float32")
        assert np.array_equal(stem, scene.stems[i])
    meta = json.loads(paths["metadata"].read_text())
    assert [e["start_frame"] for e in meta["events"]] == [e.start_frame for e in scene.events]
    assert [s["kind"] for s in meta["sources"]] == list(scene.kinds)

    before = {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()}
    with pytest.raises(InvalidInputError):
        write_scene(make_scene(22, duration=2.0), tmp_path / "s")
    after = {p.name: p.read_bytes() for p in (tmp_path / "s").iterdir()}
    assert after == before          # nothing replaced, no temporary files left behind

    silent = write_scene(scene, tmp_path / "v", mux_audio=False)
    with av.open(str(silent["video"])) as container:
        assert not container.streams.audio


def test_offscreen_and_partial_sources_are_heard_only_as_their_traits_say():
    from stepfoley.lab.miniworld import PLAIN, SceneOptions

    always = SceneOptions(offscreen_prob=0.0, partial_prob=1.0, partial_fraction=(0.4, 0.4))
    scene = make_scene(11, kinds=("lamp", "rain"), options=always)
    plain = make_scene(11, kinds=("lamp", "rain"), options=PLAIN)
    for i, (start, end) in enumerate(scene.active):
        assert end - start == 80
        spf = 16000 // 25
        outside = np.concatenate([scene.stems[i][:start * spf], scene.stems[i][end * spf:]])
        assert np.abs(outside).max() == 0.0 and np.abs(scene.stems[i][start * spf:end * spf]).max() > 0.01
        assert all(start <= e.start_frame < end for e in scene.events if e.source == i)
    # Hidden while inactive: the frames outside both spans equal the plain scene's background.
    idle = [f for f in range(200) if not any(s <= f < e for s, e in scene.active)]
    background = make_scene(11, kinds=("lamp", "rain"), options=SceneOptions(offscreen_prob=1.0, partial_prob=0.0))
    assert background.visible[0] and not background.visible[1]  # a scene always shows something
    if idle:
        assert not np.array_equal(scene.frames[idle], plain.frames[idle])
    offscreen = make_scene(12, kinds=("bell", "walker"), options=SceneOptions(offscreen_prob=1.0, partial_prob=0.0))
    onscreen = make_scene(12, kinds=("bell", "walker"), options=PLAIN, variants=offscreen.variants)
    assert offscreen.visible == (True, False)
    np.testing.assert_array_equal(offscreen.stems, onscreen.stems)  # heard the same
    x, y, w, h = offscreen.boxes[1]  # its own quarter of the frame: nothing else is drawn there
    assert np.ptp(offscreen.frames[:, y:y + h, x:x + w].astype(int), axis=0).max() == 0  # still background
    assert np.ptp(onscreen.frames[:, y:y + h, x:x + w].astype(int), axis=0).max() > 50  # a walking figure


def test_variants_change_the_sound_and_the_caption_not_the_picture():
    from stepfoley.lab.miniworld import PLAIN

    gravel = make_scene(5, kinds=("walker",), options=PLAIN, variants=("gravel",))
    wood = make_scene(5, kinds=("walker",), options=PLAIN, variants=("wood",))
    assert np.array_equal(gravel.frames, wood.frames) and gravel.events == wood.events
    assert not np.allclose(gravel.stems, wood.stems)
    assert "gravel" in gravel.captions[0][0] and "wood" in wood.captions[0][0]
    with pytest.raises(InvalidInputError, match="no variant"):
        make_scene(5, kinds=("walker",), variants=("sand",))
