"""Guidance: how the velocities of several conditionings combine into one guided velocity.

Pure functions over velocity tensors of any (matching) shape, usually (B, N, C), and the
registry of guidance methods built from them. They know nothing of networks or batching: a
method declares the branches it needs and how it combines them, and engine.sampler evaluates
the declared branches in one batched forward. Importing this module does not import torch,
so the command line and the protocol can read the registry at once.

Adding a guidance method is one `register(GuidanceMethod(...))` below plus its test; the
protocol (capabilities), the command line and the REAPER dialog read the registry.

Notation (paper: "Step-by-Step Video-to-Audio Synthesis via Negative Audio Guidance"):
    u(∅, ∅)          unconditional flow (MMAudio's learned empty video and empty text)
    u(∅, C_neg)      the empty video with a negative caption's text
    u(V, ∅)          video only
    u(V, C)          video and the target text prompt
    u_psi(V, ∅, x̃)   video plus an audio condition x̃, through the NAG ControlNet
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable, Mapping

if TYPE_CHECKING:
    from torch import Tensor


def classifier_free_guidance(v_cond: Tensor, v_uncond: Tensor, alpha: float) -> Tensor:
    """Classifier-free guidance, Eq. 3 of the paper:

        ũ = u(∅, ∅) + α (u(V, C) − u(∅, ∅))

    `v_cond` = u(V, C), `v_uncond` = u(∅, ∅), `alpha` = α (MMAudio's cfg_strength, 4.5 by
    default).

    Evaluated as α·v_cond + (1 − α)·v_uncond, the order MMAudio's `ode_wrapper` uses, so results
    match the reference to float32 rounding. The two forms are algebraically identical.

    Negative-text CFG (MMAudio's negative prompt, what a request's `negative_caption` does for
    every method but `negative_prompt`) is this same function: the sampler computes `v_uncond`
    from `net.get_empty_conditions(bs, negative_text_features=...)`, i.e. the empty video with
    the negative prompt's text, so the guided velocity is pushed away from the negative text:
    ũ = u(∅, C_neg) + α (u(V, C) − u(∅, C_neg)).
    """
    return alpha * v_cond + (1.0 - alpha) * v_uncond


def negative_prompt_guidance(v_cond: Tensor, v_uncond: Tensor, v_negative: Tensor, w1: float) -> Tensor:
    """The paper's step-by-step baseline with negative prompts (Sec. 5.1, after Woolf 2022):

        ũ = u(∅, ∅) + w1 (u(V, C_k) − u(∅, C_k,neg))

    `v_uncond` = u(∅, ∅), `v_negative` = u(∅, C_k,neg) with C_k,neg the earlier tracks'
    captions joined, `w1` = the CFG scale α. Unlike MMAudio's form (classifier_free_guidance
    with u(∅, C_neg) as its unconditional branch) the empty branch stays, so the negative text is weighted −w1 at every scale, at 1 too.
    With an empty negative caption it is CFG exactly.
    """
    return v_uncond + w1 * (v_cond - v_negative)


def negative_audio_guidance(
    v_cond: Tensor, v_uncond: Tensor, v_audio: Tensor, alpha: float, beta: float
) -> Tensor:
    """Negative Audio Guidance, Eq. 9 of the paper:

        ũ = u(∅, ∅) + α (u(V, C) − u(∅, ∅)) + β (u(V, C) − u_psi(V, ∅, x̃))

    `v_audio` = u_psi(V, ∅, x̃): the base network with the video, empty text, and the mix of
    the tracks already made (x̃) fed through the ControlNet. β > 0 pushes the new track away
    from what is already there (paper default α = 4.5, β = 1.5). β = 0 gives CFG exactly.
    """
    return classifier_free_guidance(v_cond, v_uncond, alpha) + beta * (v_cond - v_audio)


def four_term_guidance(
    v_uncond: Tensor,
    v_video: Tensor,
    v_cond: Tensor,
    v_audio: Tensor | None,
    w1: float,
    w2: float,
    w3: float,
) -> Tensor:
    """The general four-term guided flow, Eq. A6 of the paper:

        ũ = u(∅, ∅) + w1 (u(V, ∅) − u(∅, ∅))
                    + w2 (u(V, C) − u(V, ∅))
                    + w3 (u(V, ∅) − u_psi(V, ∅, x̃))

    `v_uncond` = u(∅, ∅), `v_video` = u(V, ∅), `v_cond` = u(V, C), `v_audio` = u_psi(V, ∅, x̃).
    With w1 = α, w2 = α + β, w3 = β the u(V, ∅) terms cancel and this is Eq. 9
    (`negative_audio_guidance`), which needs one forward pass fewer per step.
    """
    guided = v_uncond + w1 * (v_video - v_uncond) + w2 * (v_cond - v_video)
    if v_audio is None:  # the audio term is off: w3 = 0 needs no ControlNet branch
        if w3 != 0:
            raise ValueError("four_term_guidance: w3 needs v_audio.")
        return guided
    return guided + w3 * (v_video - v_audio)


def reference_audio_guidance(
    v_cond: Tensor, v_uncond: Tensor, v_reference: Tensor, alpha: float, gamma: float
) -> Tensor:
    """Positive audio guidance toward a reference ("make it sound like this"), as in MultiFoley:

        ũ = u(∅, ∅) + α (u(V, C) − u(∅, ∅)) + γ (u_psi(V, ∅, x_ref) − u(V, C))

    The same ControlNet and the same three branches as NAG, with the audio term's sign flipped:
    instead of pushing away from the existing tracks it pulls toward `v_reference` =
    u_psi(V, ∅, x_ref). Equals `negative_audio_guidance(..., beta=-gamma)`.
    """
    return classifier_free_guidance(v_cond, v_uncond, alpha) + gamma * (v_reference - v_cond)


# ---------------------------------------------------------------------------------------------
# The registry of guidance methods

# The branches a method may ask for, in the row order of the batched forward:
BRANCHES = (
    "cond",      # u(V, C): the video and the target caption
    "uncond",    # u(∅, ∅), or u(∅, C_neg) when the track has a negative caption and the method
                 # no "negative" branch (MMAudio's negative prompt)
    "negative",  # u(∅, C_neg): the empty video and the negative caption (the paper's baseline)
    "video",     # u(V, ∅): the video and the empty caption
    "audio",   # u_psi(V, ∅, x̃): the video and an audio condition, through the ControlNet
)


@dataclass(frozen=True)
class GuidanceWeights:
    """Every strength a combination may read (resolved: no defaults left open)."""

    alpha: float
    beta: float = 0.0
    w1: float = 0.0
    w2: float = 0.0
    w3: float = 0.0


Combine = Callable[[Mapping[str, "Tensor"], GuidanceWeights], "Tensor"]


@dataclass(frozen=True)
class GuidanceMethod:
    """One way of combining branch velocities into the guided velocity."""

    name: str
    summary: str  # one line for menus, --help and the protocol's capabilities
    branches: tuple[str, ...]  # a subset of BRANCHES, in BRANCHES order
    combine: Combine
    params: tuple[str, ...] = ("alpha",)  # the GuidanceWeights fields it reads
    # What the "audio" branch hears: "existing" = the mix of the tracks already made (x̃),
    # "reference" = a recording to sound like. None: the method has no audio branch.
    audio: str | None = None
    # negative_prompt: with no negative caption, steer away from the earlier tracks' captions.
    negative_from_previous: bool = False
    # The method that gives the same velocity with fewer branches for these weights, or when
    # there is no audio condition (track 1), or no negative caption (has_audio, has_negative),
    # or None when this one is needed as it is.
    simplify: Callable[[GuidanceWeights, bool, bool], str | None] = lambda weights, has_audio, has_negative: None
    public: bool = True  # False: reached only through `simplify`

    def __post_init__(self):
        unknown = [b for b in self.branches if b not in BRANCHES]
        if unknown or list(self.branches) != sorted(self.branches, key=BRANCHES.index):
            raise ValueError(f"{self.name}: branches must be drawn from {BRANCHES} in that order.")
        if ("audio" in self.branches) != (self.audio is not None):
            raise ValueError(f"{self.name}: a method has an 'audio' branch exactly when it names what it hears.")

    @property
    def needs_controlnet(self) -> bool:
        return "audio" in self.branches

    def negative_caption_weight(self, weights: GuidanceWeights) -> float:
        """The weight of the branch a negative caption goes into, in the guided velocity (every
        combination is linear in the branches): the "negative" branch's, −α for the paper's
        baseline; else the unconditional branch's, whose empty caption it replaces: 1 − α for
        CFG and Eq. 9, 1 − w1 for Eq. A6, 0 without the branch. It steers away only where this
        is below 0; at 0 it does nothing, above 0 it would pull toward it."""
        branch = "negative" if "negative" in self.branches else "uncond"
        if branch not in self.branches:
            return 0.0
        return float(self.combine({b: float(b == branch) for b in self.branches}, weights))


GUIDANCE_METHODS: dict[str, GuidanceMethod] = {}


def register(method: GuidanceMethod) -> GuidanceMethod:
    if method.name in GUIDANCE_METHODS:
        raise ValueError(f"A guidance method named '{method.name}' is already registered.")
    GUIDANCE_METHODS[method.name] = method
    return method


def public_methods() -> tuple[GuidanceMethod, ...]:
    return tuple(m for m in GUIDANCE_METHODS.values() if m.public)


def resolve_method(name: str, weights: GuidanceWeights, has_audio: bool,
                   has_negative: bool = False) -> GuidanceMethod:
    """The registry entry that computes `name`'s velocity for these weights: e.g. NAG with
    β = 0, or on track 1 where there is nothing to negate, is plain CFG; so is the negative
    prompt without a negative caption (`has_negative` False)."""
    method = GUIDANCE_METHODS[name]
    seen = {name}
    while (simpler := method.simplify(weights, has_audio, has_negative)) is not None:
        if simpler in seen:
            raise ValueError(f"guidance methods simplify in a loop: {sorted(seen)}")
        seen.add(simpler)
        method = GUIDANCE_METHODS[simpler]
    return method


def _cfg_at_most_one(weights: GuidanceWeights, has_audio: bool, has_negative: bool) -> str | None:
    # MMAudio's ode_wrapper: with cfg_strength < 1 only the conditional branch is evaluated; at
    # exactly 1, CFG is the conditional flow to the bit (1·u + 0·u'), so it is skipped there too.
    return "conditional" if weights.alpha <= 1.0 else None


def _conditional_below_one(weights: GuidanceWeights, conditional_form: str) -> str | None:
    # A method that is CFG plus a term: below α 1 its CFG part is MMAudio's (the conditional
    # branch), as at β = 0, where it is CFG alone: so the velocity has no jump as β → 0.
    return conditional_form if weights.alpha <= 1.0 else None


def _cfg(v, w):
    return classifier_free_guidance(v["cond"], v["uncond"], w.alpha)


register(GuidanceMethod(
    "independent", "plain CFG: ignores the tracks already made (the paper's baseline)",
    ("cond", "uncond"), _cfg, simplify=_cfg_at_most_one))
register(GuidanceMethod(
    "conditional", "the conditional branch alone: CFG at α ≤ 1 (MMAudio below 1; exactly so at 1)",
    ("cond",), lambda v, w: v["cond"], public=False))
register(GuidanceMethod(
    "negative_prompt", "CFG away from the earlier tracks' captions (the paper's text baseline)",
    ("cond", "uncond", "negative"),
    lambda v, w: negative_prompt_guidance(v["cond"], v["uncond"], v["negative"], w.alpha),
    negative_from_previous=True,
    simplify=lambda w, has_audio, has_negative: None if has_negative else "independent"))
register(GuidanceMethod(
    "nag", "Negative Audio Guidance (Eq. 9): away from the sound of the tracks already made",
    ("cond", "uncond", "audio"),
    lambda v, w: negative_audio_guidance(v["cond"], v["uncond"], v["audio"], w.alpha, w.beta),
    params=("alpha", "beta"), audio="existing",
    simplify=lambda w, has_audio, has_negative: "independent" if w.beta == 0 or not has_audio else
    _conditional_below_one(w, "nag_conditional")))
register(GuidanceMethod(
    "nag_conditional", "Eq. 9 at α ≤ 1 (CFG as MMAudio computes it there): the conditional flow plus the audio term",
    ("cond", "audio"), lambda v, w: v["cond"] + w.beta * (v["cond"] - v["audio"]),
    params=("alpha", "beta"), audio="existing", public=False))
register(GuidanceMethod(
    "text_boost", "Eq. A6 with w1 = α, w2 = α + β, w3 = 0: NAG's extra text weight without the audio term",
    ("cond", "uncond", "video"),
    lambda v, w: four_term_guidance(v["uncond"], v["video"], v["cond"], None, w.alpha, w.alpha + w.beta, 0.0),
    params=("alpha", "beta"),
    simplify=lambda w, has_audio, has_negative: "independent" if w.beta == 0 else _conditional_below_one(
        w, "text_boost_conditional")))
register(GuidanceMethod(
    # Eq. A6 with w1 = α, w2 = α + β is CFG plus β (u(V, C) − u(V, ∅)); below α 1 its CFG part is the conditional branch
    "text_boost_conditional", "text_boost at α ≤ 1 (CFG as MMAudio computes it there): the conditional flow plus "
    "the extra text term", ("cond", "video"), lambda v, w: v["cond"] + w.beta * (v["cond"] - v["video"]),
    params=("alpha", "beta"), public=False))
register(GuidanceMethod(
    "dual", "Eq. A6 with your own weights w1 (video), w2 (text), w3 (away from the earlier tracks)",
    ("cond", "uncond", "video", "audio"),
    lambda v, w: four_term_guidance(v["uncond"], v["video"], v["cond"], v["audio"], w.w1, w.w2, w.w3),
    params=("w1", "w2", "w3"), audio="existing",
    simplify=lambda w, has_audio, has_negative: "dual_text" if w.w3 == 0 or not has_audio else None))
register(GuidanceMethod(
    "dual_text", "Eq. A6 without the audio term", ("cond", "uncond", "video"),
    lambda v, w: four_term_guidance(v["uncond"], v["video"], v["cond"], None, w.w1, w.w2, 0.0),
    params=("w1", "w2"), public=False))
register(GuidanceMethod(
    "reference", "sound like a reference recording (MultiFoley): the NAG ControlNet with the opposite sign",
    ("cond", "uncond", "audio"),
    lambda v, w: reference_audio_guidance(v["cond"], v["uncond"], v["audio"], w.alpha, w.beta),
    params=("alpha", "beta"), audio="reference",
    simplify=lambda w, has_audio, has_negative: "independent" if w.beta == 0 else _conditional_below_one(
        w, "reference_conditional")))
register(GuidanceMethod(
    "reference_conditional", "reference at α ≤ 1 (CFG as MMAudio computes it there): the conditional flow pulled "
    "toward the reference", ("cond", "audio"), lambda v, w: v["cond"] + w.beta * (v["audio"] - v["cond"]),
    params=("alpha", "beta"), audio="reference", public=False))
