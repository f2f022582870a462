"""Caption paraphrases for each source kind, so text conditioning learns meaning, not strings.

`CAPTIONS[kind]` name the kind alone ("footsteps"); `VARIANT_CAPTIONS[(kind, variant)]` also
name what the picture cannot show ("footsteps on gravel" vs "footsteps on wood").
"""

CAPTIONS: dict[str, tuple[str, ...]] = {
    "ball": ("a ball bounces", "a bouncing ball", "a ball hitting the floor", "bouncing ball impacts"),
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
    "walker": ("footsteps", "a person walking", "footsteps of someone walking", "someone walking"),
}


VARIANT_CAPTIONS: dict[tuple[str, str], tuple[str, ...]] = {
    ("ball", "rubber"): ("a rubber ball bouncing", "thuds of a bouncing rubber ball", "a rubber ball hitting the floor",
                         "dull thuds of a rubber ball"),
    ("ball", "metal"): ("a metal ball clanking", "a steel ball bouncing with a clang", "metallic clanks of a bouncing ball",
                        "a metal ball hitting the floor"),
    ("walker", "gravel"): ("footsteps on gravel", "crunchy footsteps on a gravel path", "someone walking on gravel",
                           "gravel crunching underfoot"),
    ("walker", "wood"): ("footsteps on wood", "steps on a wooden floor", "someone walking on floorboards",
                         "hollow footsteps on wooden boards"),
}


def source_captions(kind: str, variant: str = "") -> tuple[str, ...]:
    """The paraphrases that describe one source exactly (its variant where it has one)."""
    return VARIANT_CAPTIONS.get((kind, variant), CAPTIONS[kind])


def scene_caption(paraphrase_sets, choices) -> str:
    """One caption for a mixture: the chosen paraphrase of each source, joined in order."""
    parts = [options[choice % len(options)] for options, choice in zip(paraphrase_sets, choices)]
    if len(parts) == 1:
        return parts[0]
    return ", ".join(parts[:-1]) + " and " + parts[-1]
