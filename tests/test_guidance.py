"""Guidance formulas checked on analytic velocity fields.

Every branch is a linear field v_k(x) = m_k − x pulling toward a point m_k. A guidance rule is an
affine combination of branches, so its guided field is (Σ c_k m_k) − (Σ c_k) x with the rule's
coefficients c_k, and when Σ c_k = 1 the guided ODE dx/dt = m* − x has the closed-form solution
x(t) = m* + (x0 − m*) e^(−t). The tests derive m* from each equation's coefficients
independently of the implementation.
"""
import math

import pytest
import torch

from stepfoley.engine.guidance import (
    classifier_free_guidance,
    four_term_guidance,
    negative_audio_guidance,
    negative_prompt_guidance,
    reference_audio_guidance,
)
from stepfoley.engine.sampler import euler_sample, time_grid

SHAPE = (2, 7, 3)


def _targets(n, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randn(SHAPE, generator=g, dtype=torch.float64) for _ in range(n)]


def _field(m):
    return lambda x: m - x


def _x(seed=1):
    return torch.randn(SHAPE, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)


def test_cfg_is_eq3_on_linear_fields():
    m_cond, m_uncond = _targets(2)
    x = _x()
    alpha = 4.5
    guided = classifier_free_guidance(m_cond - x, m_uncond - x, alpha)
    # Eq. 3 coefficients: u(∅,∅) gets 1 − α, u(V,C) gets α; they sum to 1.
    m_star = (1 - alpha) * m_uncond + alpha * m_cond
    torch.testing.assert_close(guided, m_star - x, rtol=0, atol=1e-12)


def test_cfg_alpha_one_is_the_conditional_flow():
    m_cond, m_uncond = _targets(2)
    x = _x()
    torch.testing.assert_close(
        classifier_free_guidance(m_cond - x, m_uncond - x, 1.0), m_cond - x, rtol=0, atol=0
    )


def test_the_papers_negative_prompt_keeps_the_empty_branch_and_weighs_the_negative_text_at_every_scale():
    m_cond, m_uncond, m_neg = _targets(3, seed=4)
    x = _x()
    for w1 in (1.0, 4.5):
        guided = negative_prompt_guidance(m_cond - x, m_uncond - x, m_neg - x, w1)
        expected = (m_uncond - x) + w1 * ((m_cond - x) - (m_neg - x))  # Sec. 5.1
        torch.testing.assert_close(guided, expected, rtol=0, atol=1e-12)
    # at 1 MMAudio's form is the conditional flow, the paper's is not
    assert not torch.allclose(negative_prompt_guidance(m_cond - x, m_uncond - x, m_neg - x, 1.0), m_cond - x)
    # an empty negative caption (u(∅, C_neg) = u(∅, ∅)) is CFG
    torch.testing.assert_close(negative_prompt_guidance(m_cond - x, m_uncond - x, m_uncond - x, 4.5),
                               classifier_free_guidance(m_cond - x, m_uncond - x, 4.5), rtol=0, atol=1e-12)


def test_nag_is_eq9_on_linear_fields():
    m_cond, m_uncond, m_audio = _targets(3)
    x = _x()
    alpha, beta = 4.5, 1.5
    guided = negative_audio_guidance(m_cond - x, m_uncond - x, m_audio - x, alpha, beta)
    # Eq. 9 coefficients: u(∅,∅): 1 − α, u(V,C): α + β, u_psi: −β (sum 1).
    m_star = (1 - alpha) * m_uncond + (alpha + beta) * m_cond - beta * m_audio
    torch.testing.assert_close(guided, m_star - x, rtol=0, atol=1e-12)


def test_nag_pushes_away_from_the_audio_condition():
    m_cond, m_uncond, m_audio = _targets(3, seed=5)
    x = _x()
    distances = []
    for beta in (0.0, 1.0, 2.0):
        guided = negative_audio_guidance(m_cond - x, m_uncond - x, m_audio - x, 4.5, beta)
        m_star = guided + x
        distances.append(float((m_star - m_audio).norm()))
    assert distances[0] < distances[1] < distances[2]


def test_nag_with_zero_beta_is_cfg_exactly():
    v_cond, v_uncond, v_audio = (t.float() for t in _targets(3, seed=2))
    torch.testing.assert_close(
        negative_audio_guidance(v_cond, v_uncond, v_audio, 4.5, 0.0),
        classifier_free_guidance(v_cond, v_uncond, 4.5),
        rtol=0,
        atol=0,
    )


def test_nag_at_alpha_one_needs_no_unconditional_branch():
    from stepfoley.engine.guidance import GUIDANCE_METHODS

    v_cond, v_uncond, v_audio = (t.float() for t in _targets(3, seed=5))
    weights = GuidanceWeights(1.0, 1.5)
    torch.testing.assert_close(
        GUIDANCE_METHODS["nag_conditional"].combine({"cond": v_cond, "audio": v_audio}, weights),
        GUIDANCE_METHODS["nag"].combine({"cond": v_cond, "uncond": v_uncond, "audio": v_audio}, weights),
        rtol=0, atol=0)


def test_four_term_is_eq_a6_on_linear_fields():
    m_uncond, m_video, m_cond, m_audio = _targets(4, seed=4)
    x = _x()
    w1, w2, w3 = 2.0, 3.5, 0.7
    guided = four_term_guidance(m_uncond - x, m_video - x, m_cond - x, m_audio - x, w1, w2, w3)
    m_star = (1 - w1) * m_uncond + (w1 - w2 + w3) * m_video + w2 * m_cond - w3 * m_audio
    torch.testing.assert_close(guided, m_star - x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("alpha,beta", [(4.5, 1.5), (3.5, 0.0), (1.0, 2.0)])
def test_four_term_reduces_to_nag(alpha, beta):
    v_uncond, v_video, v_cond, v_audio = _targets(4, seed=6)
    four = four_term_guidance(v_uncond, v_video, v_cond, v_audio, alpha, alpha + beta, beta)
    nag = negative_audio_guidance(v_cond, v_uncond, v_audio, alpha, beta)
    torch.testing.assert_close(four, nag, rtol=0, atol=1e-12)
    # u(V, ∅) really cancels: changing it leaves the result unchanged.
    four_other_video = four_term_guidance(
        v_uncond, v_video + 10.0, v_cond, v_audio, alpha, alpha + beta, beta
    )
    torch.testing.assert_close(four_other_video, nag, rtol=0, atol=1e-11)


def test_four_term_with_equal_weights_and_no_audio_is_eq3():
    v_uncond, v_video, v_cond, v_audio = _targets(4, seed=7)
    torch.testing.assert_close(
        four_term_guidance(v_uncond, v_video, v_cond, v_audio, 4.5, 4.5, 0.0),
        classifier_free_guidance(v_cond, v_uncond, 4.5),
        rtol=0,
        atol=1e-12,
    )


def test_reference_guidance_pulls_toward_the_reference():
    m_cond, m_uncond, m_ref = _targets(3, seed=8)
    x = _x()
    alpha, gamma = 4.5, 1.0
    guided = reference_audio_guidance(m_cond - x, m_uncond - x, m_ref - x, alpha, gamma)
    m_star = (1 - alpha) * m_uncond + (alpha - gamma) * m_cond + gamma * m_ref
    torch.testing.assert_close(guided, m_star - x, rtol=0, atol=1e-12)
    # Opposite sign of NAG with the same branches.
    torch.testing.assert_close(
        guided,
        negative_audio_guidance(m_cond - x, m_uncond - x, m_ref - x, alpha, -gamma),
        rtol=0,
        atol=1e-12,
    )
    cfg_only = classifier_free_guidance(m_cond - x, m_uncond - x, alpha) + x
    assert float((guided + x - m_ref).norm()) < float((cfg_only - m_ref).norm())


@pytest.mark.parametrize("rule", ["cfg", "nag", "reference"])
def test_guided_ode_matches_closed_form_solution(rule):
    m_cond, m_uncond, m_audio = _targets(3, seed=9)
    alpha, beta = 4.5, 1.5
    if rule == "cfg":
        m_star = (1 - alpha) * m_uncond + alpha * m_cond
    elif rule == "nag":
        m_star = (1 - alpha) * m_uncond + (alpha + beta) * m_cond - beta * m_audio
    else:
        m_star = (1 - alpha) * m_uncond + (alpha - beta) * m_cond + beta * m_audio

    def velocity(t, x):
        v_c, v_u, v_a = m_cond - x, m_uncond - x, m_audio - x
        if rule == "cfg":
            return classifier_free_guidance(v_c, v_u, alpha)
        if rule == "nag":
            return negative_audio_guidance(v_c, v_u, v_a, alpha, beta)
        return reference_audio_guidance(v_c, v_u, v_a, alpha, beta)

    x0 = _x()
    steps = 400
    x1 = euler_sample(velocity, x0, time_grid(steps))
    exact = m_star + (x0 - m_star) * math.exp(-1.0)
    # Euler on dx/dt = m* − x gives (1 − h)^n exactly; its global error is O(h).
    discrete = m_star + (x0 - m_star) * (1 - 1 / steps) ** steps
    torch.testing.assert_close(x1, discrete, rtol=0, atol=1e-5)
    torch.testing.assert_close(x1, exact, rtol=0, atol=5e-3 * float((x0 - m_star).abs().max()))


# ---------------------------------------------------------------- the registry

from stepfoley.engine.guidance import (BRANCHES, GUIDANCE_METHODS, GuidanceMethod, GuidanceWeights,  # noqa: E402
                                       public_methods, resolve_method)


def test_registry_entries_are_well_formed_and_reach_their_simplifications():
    for method in GUIDANCE_METHODS.values():
        assert set(method.branches) <= set(BRANCHES)
        for weights in (GuidanceWeights(0.5, 0.0, 0.0, 0.0, 0.0), GuidanceWeights(4.5, 1.5, 4.5, 6.0, 1.5)):
            for has_audio in (False, True):
                for has_negative in (False, True):
                    assert resolve_method(method.name, weights, has_audio, has_negative).name in GUIDANCE_METHODS
    assert {m.name for m in public_methods()} == {"independent", "negative_prompt", "nag", "text_boost", "dual",
                                                   "reference"}


@pytest.mark.parametrize("name, weights, has_audio, used", [
    ("nag", GuidanceWeights(4.5, 1.5), True, "nag"),
    ("nag", GuidanceWeights(4.5, 1.5), False, "independent"),  # track 1: nothing to negate
    ("nag", GuidanceWeights(4.5, 0.0), True, "independent"),  # beta = 0 is CFG exactly
    ("nag", GuidanceWeights(0.5, 0.0), True, "conditional"),  # MMAudio: CFG below 1 is the conditional branch
    ("independent", GuidanceWeights(1.0), False, "conditional"),  # at 1 CFG is the conditional flow exactly
    ("negative_prompt", GuidanceWeights(1.0), False, "conditional"),  # without a negative caption: CFG
    ("nag", GuidanceWeights(1.0, 1.5), True, "nag_conditional"),
    ("nag", GuidanceWeights(0.5, 1.5), True, "nag_conditional"),  # below 1 as CFG is there (β = 0: conditional)
    ("nag", GuidanceWeights(1.0, 1.5), False, "conditional"),  # track 1 at α = 1
    ("text_boost", GuidanceWeights(4.5, 1.5), False, "text_boost"),
    ("text_boost", GuidanceWeights(4.5, 0.0), False, "independent"),
    ("dual", GuidanceWeights(4.5, 1.5, 2.0, 5.0, 1.0), True, "dual"),
    ("dual", GuidanceWeights(4.5, 1.5, 2.0, 5.0, 0.0), True, "dual_text"),
    ("dual", GuidanceWeights(4.5, 1.5, 2.0, 5.0, 1.0), False, "dual_text"),
    ("reference", GuidanceWeights(4.5, 0.0), True, "independent"),
    ("reference", GuidanceWeights(0.5, 1.0), True, "reference_conditional"),
    ("text_boost", GuidanceWeights(1.0, 1.5), False, "text_boost_conditional"),
])
def test_resolve_method_picks_the_cheapest_equivalent(name, weights, has_audio, used):
    assert resolve_method(name, weights, has_audio).name == used


@pytest.mark.parametrize("name", ["nag", "text_boost", "reference"])
def test_cfg_plus_a_term_below_alpha_one_has_no_jump_as_beta_goes_to_zero(name):
    from stepfoley.engine.guidance import GUIDANCE_METHODS

    v = dict(zip(("cond", "uncond", "video", "audio"), (t.float() for t in _targets(4, seed=6))))

    def velocity(alpha, beta):
        weights = GuidanceWeights(alpha, beta)
        method = resolve_method(name, weights, has_audio=True)
        return GUIDANCE_METHODS[method.name].combine({b: v[b] for b in method.branches}, weights)

    torch.testing.assert_close(velocity(0.5, 1e-6), velocity(0.5, 0.0), rtol=0, atol=1e-4)
    # at α = 1 the conditional form is the full one to float rounding: CFG at 1 is u(V, C)
    full = GUIDANCE_METHODS[name]
    torch.testing.assert_close(velocity(1.0, 1.5), full.combine({b: v[b] for b in full.branches},
                                                                GuidanceWeights(1.0, 1.5)), rtol=0, atol=1e-5)


def test_the_negative_prompt_with_a_negative_caption_is_never_simplified():
    for alpha in (1.0, 4.5):  # at 1 too: the paper's form keeps a weight of -1 on the negative text
        assert resolve_method("negative_prompt", GuidanceWeights(alpha), False, has_negative=True).name == \
            "negative_prompt"


def test_a_method_must_name_what_its_audio_branch_hears():
    with pytest.raises(ValueError, match="audio"):
        GuidanceMethod("broken", "no", ("cond", "audio"), lambda v, w: v["cond"])
    with pytest.raises(ValueError, match="order"):
        GuidanceMethod("broken", "no", ("uncond", "cond"), lambda v, w: v["cond"])


@pytest.mark.parametrize("name, weights, expected", [
    ("independent", GuidanceWeights(4.5), -3.5),  # CFG: 1 - α
    ("independent", GuidanceWeights(1.0), 0.0),
    ("nag", GuidanceWeights(4.5, 1.5), -3.5),  # Eq. 9 keeps CFG's unconditional weight
    ("text_boost", GuidanceWeights(1.0, 1.5), 0.0),  # evaluated, weighted 0
    ("reference", GuidanceWeights(0.5, 1.0), 0.5),  # below α 1 a negative caption would attract
    ("dual", GuidanceWeights(4.5, 1.5, 2.0, 5.0, 1.0), -1.0),  # Eq. A6: 1 - w1
    ("conditional", GuidanceWeights(1.0), 0.0),  # no unconditional branch
    ("negative_prompt", GuidanceWeights(1.0), -1.0),  # the paper's baseline: its own branch, -α
    ("negative_prompt", GuidanceWeights(4.5), -4.5),
])
def test_the_negative_caption_weight_says_where_a_negative_caption_acts(name, weights, expected):
    assert GUIDANCE_METHODS[name].negative_caption_weight(weights) == pytest.approx(expected)


def test_the_requests_guidance_fields_are_the_weights_a_method_reads():
    """The request, the track's settings and the combinations pass the strengths on by name:
    one list, GUIDANCE_PARAMS, that must be GuidanceWeights' fields (in any order)."""
    from dataclasses import fields

    from stepfoley.engine.guidance import GuidanceWeights
    from stepfoley.engine.session import TrackSettings
    from stepfoley.request import GUIDANCE_PARAMS, GuidanceDefaults

    assert {f.name for f in fields(GuidanceWeights)} == set(GUIDANCE_PARAMS)
    settings = TrackSettings("rain", method="dual", alpha=1.0, beta=2.0, w1=3.0, w2=4.0, w3=5.0)
    assert settings.resolved(GuidanceDefaults("nag", 4.5, 1.5, 25)).weights == GuidanceWeights(1.0, 2.0, 3.0, 4.0, 5.0)
    filled = TrackSettings("rain", alpha=2.0, beta=0.5).resolved(GuidanceDefaults("nag", 4.5, 1.5, 25))
    assert filled.weights == GuidanceWeights(2.0, 0.5, 2.0, 2.5, 0.5) and filled.method == "nag" and filled.steps == 25
