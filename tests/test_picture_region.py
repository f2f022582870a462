"""The picture region (protocol 2): frames cropped to it before the video features, only while
its time range lasts, its own feature-cache entry, and a request that carries it through the
service. A real mp4 of four coloured quadrants; the random-weight embedded model."""

import numpy as np
import pytest

from stepfoley.lab.miniworld.writer import encode_mp4
from stepfoley.engine.input_files import check_request_paths
from stepfoley.engine.pipeline import PictureFocus, Region
from stepfoley.engine.video import read_region
from stepfoley.request import parse_request
from test_bridge_kit import make_request

RED, GREEN, BLUE, WHITE = (230, 20, 20), (20, 230, 20), (20, 20, 230), (230, 230, 230)


@pytest.fixture(scope="module")
def quadrants(tmp_path_factory):
    """2 s at 25 fps, 64 x 64: red top left, green top right, blue bottom left, white bottom right."""
    frame = np.zeros((64, 64, 3), np.uint8)
    frame[:32, :32], frame[:32, 32:], frame[32:, :32], frame[32:, 32:] = RED, GREEN, BLUE, WHITE
    path = tmp_path_factory.mktemp("video") / "quadrants.mp4"
    encode_mp4(path, np.repeat(frame[None], 50, axis=0), 25, None, 16000)
    return path


def _mean_colour(frames) -> np.ndarray:
    # frames: (T, 3, H, W) uint8 -> (T, 3)
    return frames.float().mean(dim=(2, 3)).numpy()


def test_frames_are_cropped_to_the_region_only_while_it_applies(quadrants):
    whole = _mean_colour(read_region(quadrants, 0.0, 2.0, 25, 32))
    np.testing.assert_allclose(whole, np.mean([RED, GREEN, BLUE, WHITE], axis=0)[None].repeat(50, 0), atol=6)
    red = _mean_colour(read_region(quadrants, 0.0, 2.0, 25, 32, focus=PictureFocus((0.0, 0.0, 0.5, 0.5))))
    np.testing.assert_allclose(red, np.array([RED] * 50, float), atol=12)
    later = PictureFocus((0.5, 0.5, 1.0, 1.0), start=1.0, end=1.5)     # white, from 1 s to 1.5 s of the file
    frames = _mean_colour(read_region(quadrants, 0.0, 2.0, 25, 32, focus=later))
    times = np.arange(50) / 25
    inside = (times >= 1.0) & (times < 1.5)
    np.testing.assert_allclose(frames[inside], np.array([WHITE] * inside.sum(), float), atol=12)
    np.testing.assert_allclose(frames[~inside], whole[~inside], atol=1)


def test_the_request_times_become_file_times_at_the_items_playrate(tmp_path):
    request = make_request(tmp_path, protocol=2, picture_region=[0.25, 0, 1, 0.5], picture_region_time=[0.25, 0.5])
    request["region"] = {"video": "/v.mp4", "file_in": 10.0, "file_out": 12.0, "playrate": 2.0}  # a 1 s stem
    focus = PictureFocus.from_request(parse_request(request))
    assert focus == PictureFocus((0.25, 0.0, 1.0, 0.5), 10.5, 11.0)
    assert PictureFocus.from_request(parse_request(make_request(tmp_path))) is None
    assert focus.pixels(64, 64) == (0, 32, 16, 64) and PictureFocus((0.5, 0.5, 0.51, 0.51)).pixels(4, 4) == (2, 3, 2, 3)


def test_the_request_times_follow_the_stems_varispeed_when_project_end_is_given(tmp_path):
    # 4 s of picture stretched over an 8 s stem at playrate 1: a stem second is half a second
    # of picture, so the stem's second half is the picture's second half
    request = make_request(tmp_path, protocol=2, picture_region=[0, 0, 0.5, 0.5], picture_region_time=[4.0, 8.0])
    request["region"] = {"video": "/v.mp4", "file_in": 10.0, "file_out": 14.0, "project_start": 0.0,
                         "project_end": 8.0}
    focus = PictureFocus.from_request(parse_request(request))
    assert (focus.start, focus.end) == (12.0, 14.0)


def test_a_region_changes_the_features_and_has_its_own_cache_entry(quadrants):
    from stepfoley.engine.embedded.model import build_embedded_model
    from stepfoley.engine.features.cache import FeatureCache
    from stepfoley.engine.session import StepSession

    model = build_embedded_model(random_weights=True)
    cache = FeatureCache()
    plain = StepSession(model, Region(quadrants, 0.0, 2.0), cache)._window_features(lambda *a: None)
    focused = StepSession(model, Region(quadrants, 0.0, 2.0, PictureFocus((0, 0, 0.5, 0.5))),
                          cache)._window_features(lambda *a: None)
    assert len(cache) == 2
    assert not np.allclose(plain[0][0].numpy(), focused[0][0].numpy())           # appearance differs
    again = StepSession(model, Region(quadrants, 0.0, 2.0), cache)._window_features(lambda *a: None)
    assert len(cache) == 2 and np.array_equal(again[0][0].numpy(), plain[0][0].numpy())


def test_the_service_makes_a_track_for_a_picture_region(quadrants, tmp_path):
    from stepfoley.engine.embedded.model import build_embedded_model
    from stepfoley.engine.service import FoleyService

    service = FoleyService(build_embedded_model(random_weights=True))
    request = make_request(tmp_path, protocol=2, picture_region=[0, 0, 0.5, 0.5], picture_region_time=[0.5, 1.5],
                           method="independent", steps=2, sample_rate=16000)
    request["region"] = {"video": str(quadrants), "file_in": 0.0, "file_out": 2.0}
    result = service(check_request_paths(parse_request(request, service.capabilities())))
    (stem,) = result["stems"]
    assert stem["metadata"]["picture_focus"] == {"rect": (0.0, 0.0, 0.5, 0.5), "start": 0.5, "end": 1.5}


def test_a_focus_that_keys_the_same_crops_the_same():
    """Float noise dropped from the feature cache's key must not move the crop either."""
    exact, noisy = PictureFocus((0.1, 0.0, 0.3, 0.3)), PictureFocus((0.1, 0.0, 0.3, 0.30000000000000004))
    assert exact.key() == noisy.key() and exact.pixels(1080, 1920) == noisy.pixels(1080, 1920)
