"""The procedural audiovisual mini-world: deterministic scenes of 1-4 sound sources (on or off
screen, for all or part of the clip, in sound variants the picture cannot tell apart) with
ground-truth stems, captions and a frame-accurate event timeline, for training and evaluating
the embedded model."""

from .captions import CAPTIONS, VARIANT_CAPTIONS, scene_caption, source_captions
from .scene import FPS, FRAME_SIZE, PLAIN, SAMPLE_RATE, Event, Scene, SceneOptions, make_scene, single_source_clip
from .sources import SOURCE_KINDS, VARIANTS
from .writer import write_scene

__all__ = ["CAPTIONS", "FPS", "FRAME_SIZE", "PLAIN", "SAMPLE_RATE", "SOURCE_KINDS", "VARIANTS", "VARIANT_CAPTIONS",
           "Event", "Scene", "SceneOptions", "make_scene", "scene_caption", "single_source_clip", "source_captions",
           "write_scene"]
