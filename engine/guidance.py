"""Guidance: how the velocities of several conditionings combine into one guided velocity.

Pure functions over velocity tensors of any (matching) shape, usually (B, N, C). They know
nothing of networks or batching; engine.sampler decides which branches to evaluate and
evaluates them all in one batched forward.

Notation (paper: "Step-by-Step Video-to-Audio Synthesis via Negative Audio Guidance"):
    u(∅, ∅)          unconditional flow (MMAudio's learned empty video and empty text)
    u(V, ∅)          video only
    u(V, C)          video and the target text prompt
    u_psi(V, ∅, x̃)   video plus an audio condition x̃, through the NAG ControlNet
"""
from __future__ import annotations

from torch import Tensor


def classifier_free_guidance(v_cond: Tensor, v_uncond: Tensor, alpha: float) -> Tensor:
    """Classifier-free guidance, Eq. 3 of the paper:

        ũ = u(∅, ∅) + α (u(V, C) − u(∅, ∅))

    `v_cond` = u(V, C), `v_uncond` = u(∅, ∅), `alpha` = α (MMAudio's cfg_strength, 4.5 by
    default).

    Evaluated as α·v_cond + (1 − α)·v_uncond, the order MMAudio's `ode_wrapper` uses, so results
    match the reference to float32 rounding. The two forms are algebraically identical.

    Negative-text CFG (MMAudio's negative prompt) is this same function: the sampler computes
    `v_uncond` from `net.get_empty_conditions(bs, negative_text_features=...)`, i.e. the empty
    video with the negative prompt's text, so the guided velocity is pushed away from the
    negative text: ũ = u(∅, C_neg) + α (u(V, C) − u(∅, C_neg)).
    """
    return alpha * v_cond + (1.0 - alpha) * v_uncond


def negative_text_guidance(v_cond: Tensor, v_negative: Tensor, alpha: float) -> Tensor:
    """Negative-prompt CFG as the paper's baseline and MMAudio write it:

        ũ = u(∅, C_neg) + α (u(V, C) − u(∅, C_neg))

    `v_negative` = u(∅, C_neg), the unconditional branch evaluated with the negative prompt's
    text features in place of the empty text. Identical arithmetic to
    `classifier_free_guidance`; a separate name so call sites say what they mean.
    """
    return classifier_free_guidance(v_cond, v_negative, alpha)


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
    v_audio: Tensor,
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
    return (
        v_uncond
        + w1 * (v_video - v_uncond)
        + w2 * (v_cond - v_video)
        + w3 * (v_video - v_audio)
    )


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
