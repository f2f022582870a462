"""The procedural audiovisual mini-world: deterministic scenes of 2-4 visible, audible sources
with ground-truth stems, captions and a frame-accurate event timeline, for training and
evaluating the embedded model."""

from .captions import CAPTIONS, scene_caption
from .scene import FPS, FRAME_SIZE, SAMPLE_RATE, Event, Scene, make_scene, single_source_clip
from .sources import SOURCE_KINDS
from .writer import write_scene

__all__ = ["CAPTIONS", "FPS", "FRAME_SIZE", "SAMPLE_RATE", "SOURCE_KINDS", "Event", "Scene",
           "make_scene", "scene_caption", "single_source_clip", "write_scene"]
