"""Caption paraphrases for each source kind, so text conditioning learns meaning, not strings."""

CAPTIONS: dict[str, tuple[str, ...]] = {
    "ball": ("a ball bounces", "thuds of a bouncing ball", "a rubber ball hitting the floor",
             "bouncing ball impacts"),
    "lamp": ("a lamp blinks and beeps", "beeping while a light flashes", "an electronic beep from a blinking lamp",
             "a flashing light with a tone"),
    "rain": ("rain falling", "the hiss of rain", "rainfall pattering steadily", "a rain shower"),
    "flag": ("a flag flapping in the wind", "wind blowing", "gusts of wind around a waving flag",
             "wind noise"),
    "pendulum": ("a pendulum ticking", "tick tock of a clock pendulum", "clicks of a swinging pendulum",
                 "a clock ticking"),
    "wheel": ("a spinning wheel hums", "the hum of a rotating wheel", "a motor whirring",
              "machine hum rising and falling"),
    "bell": ("a bell rings", "a shaken bell ringing", "the chime of a small bell", "bell chimes"),
    "walker": ("footsteps", "a person walking", "footsteps of someone walking", "steps on a hard floor"),
}


def scene_caption(kinds, choices) -> str:
    """One caption for a mixture: the chosen paraphrase of each source, joined in order."""
    parts = [CAPTIONS[kind][choice % len(CAPTIONS[kind])] for kind, choice in zip(kinds, choices)]
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]
