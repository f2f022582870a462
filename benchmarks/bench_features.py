"""Time split per track (decode, CLIP, Synchformer) for two tracks over the same region: the
second track is a cache hit and should cost ~nothing. Random-weight, reduced-size networks
(the config is printed); run with --full for the official sizes (slow on CPU).

    stepfoley bench features [--seconds 8] [--full] [--device cpu] [--picture 3840x2160]

Then the picture alone at --picture's size, read for the embedded model (64 px) and for MMAudio
(CLIP and Synchformer), with frames scaled down while they are converted to RGB
(engine.video.PRESCALE_FACTOR) against converted whole, side by side.
"""

import argparse
import tempfile
import time
from fractions import Fraction
from pathlib import Path

import av
import numpy as np
import torch

from stepfoley.engine.devices import check_threads, choose_device
from stepfoley.engine.features.cache import FeatureCache
from stepfoley.engine.features.clip import ClipConfig, ClipModel
from stepfoley.engine.features.mmaudio_features import MMAudioVideoEncoder
from stepfoley.engine.features.synchformer import SynchformerConfig, SynchformerVisual
from stepfoley.engine.video import CLIP_SIZE
from stepfoley.request import MIN_REGION_SECONDS


def write_test_video(path: Path, seconds: float, width=1280, height=720, fps=25) -> Path:
    rng = np.random.default_rng(0)
    base = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=fps)
        stream.width, stream.height, stream.pix_fmt = width, height, "yuv420p"
        for i in range(int(seconds * fps)):
            frame = av.VideoFrame.from_ndarray(np.roll(base, 7 * i, axis=1), format="rgb24")
            frame.pts, frame.time_base = i, Fraction(1, fps)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


# The region is encoded in one piece, as the engine encodes one window of it (a longer region is
# read window by window): at about 54 MB a second, 600 s in one piece needed some 30 GB.
MOST_SECONDS = 64.0


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(prog="stepfoley bench features", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seconds", type=float, default=8.0,
                        help=f"the region, {MIN_REGION_SECONDS:g} to {MOST_SECONDS:g} s (default 8: one window of "
                             "MMAudio's)")
    parser.add_argument("--full", action="store_true", help="official network sizes")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--threads", type=int, default=1,
                        help="torch threads (default 1: figures that other work beside them moves least)")
    parser.add_argument("--picture", default="3840x2160", metavar="WxH",
                        help="size of the picture whose reading is timed both ways (default 4K UHD)")
    args = parser.parse_args(argv)
    try:
        picture = tuple(int(v) for v in args.picture.lower().split("x"))
        # even: the picture is written as H.264 in 4:2:0, which halves both (17x17 failed in libx264)
        if len(picture) != 2 or not all(16 <= v <= 8192 and v % 2 == 0 for v in picture):
            raise ValueError
    except ValueError:
        parser.error("--picture is WIDTHxHEIGHT, each an even number from 16 to 8192 (e.g. 3840x2160)")
    if not MIN_REGION_SECONDS <= args.seconds <= MOST_SECONDS:
        parser.error(f"--seconds must be from {MIN_REGION_SECONDS:g} to {MOST_SECONDS:g}")
    device = choose_device(args.device)
    torch.set_num_threads(check_threads(args.threads))

    if args.full:
        clip_cfg, sync_cfg = ClipConfig(), SynchformerConfig()
    else:
        clip_cfg = ClipConfig(vision_width=256, vision_layers=4, vision_head_width=64,
                              text_width=128, text_heads=2, text_layers=1, vocab_size=1000,
                              embed_dim=1024)
        sync_cfg = SynchformerConfig(embed_dim=192, depth=2, num_heads=3)
    print(f"CLIP image tower: {clip_cfg}")
    print(f"Synchformer:      {sync_cfg}")
    print(f"torch threads: {torch.get_num_threads()}  device: {device}")
    torch.manual_seed(0)
    clip, sync = ClipModel(clip_cfg).to(device), SynchformerVisual(sync_cfg).to(device)
    with torch.no_grad():
        for p in [*clip.parameters(), *sync.parameters()]:
            p.normal_(0.0, 0.02)

    with tempfile.TemporaryDirectory() as tmp:
        video = write_test_video(Path(tmp) / "picture.mp4", args.seconds + 0.5)
        encoder = MMAudioVideoEncoder(clip, sync, clip_size=CLIP_SIZE)
        cache = FeatureCache()  # in memory, as the session uses it
        print(f"region 0.0-{args.seconds:.1f} s of a 1280x720 H.264 file")
        print(f"{'track':>5} {'decode s':>9} {'CLIP s':>8} {'Sync s':>8} {'total s':>8}  shapes")
        for track in (1, 2):
            misses = cache.stats.misses
            t0 = time.perf_counter()
            clip_f, sync_f = cache.get_or_compute_region(video, 0.0, args.seconds, encoder.encoder_id,
                                                         lambda: encoder.encode_region(video, 0.0, args.seconds))
            total = time.perf_counter() - t0
            computed = cache.stats.misses > misses
            t = encoder.last_timings if computed else dict.fromkeys(encoder.last_timings, 0.0)
            print(f"{track:>5} {t['decode_s']:>9.3f} {t['clip_s']:>8.3f} {t['sync_s']:>8.3f} "
                  f"{total:>8.3f}  {tuple(clip_f.shape)} {tuple(sync_f.shape)}")
        print(f"cache: {cache.stats}")
        _time_picture_reading(write_test_video(Path(tmp) / "large.mp4", 2.5, *picture), picture)


def _time_picture_reading(video: Path, picture: tuple[int, int]) -> None:
    from stepfoley.engine import video as reader
    from stepfoley.engine.embedded.encoders import FRAME_SIZE

    asks = {"embedded (64 px)": [reader.FrameRequest(reader.SYNC_FPS, FRAME_SIZE, "stretch")],
            "MMAudio (CLIP + Synchformer)": [reader.CLIP_REQUEST, reader.SYNC_REQUEST]}
    factor = reader.PRESCALE_FACTOR
    print(f"reading 2.0 s of a {picture[0]}x{picture[1]} H.264 file, {torch.get_num_threads()} thread(s):")
    print(f"{'for':>30} {'scaled s':>9} {'whole s':>9} {'ratio':>6} {'mean |diff|':>12}")
    try:
        for name, requests in asks.items():
            took, frames = [], []
            for prescale in (factor, float("inf")):
                reader.PRESCALE_FACTOR = prescale
                t0 = time.perf_counter()
                frames.append(reader.read_regions(video, 0.0, 2.0, requests))
                took.append(time.perf_counter() - t0)
            diff = max(float((a.float() - b.float()).abs().mean()) for a, b in zip(*frames))
            print(f"{name:>30} {took[0]:>9.2f} {took[1]:>9.2f} {took[1] / took[0]:>5.1f}x {diff:>12.2f}")
    finally:
        reader.PRESCALE_FACTOR = factor


if __name__ == "__main__":
    main()
