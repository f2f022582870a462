"""The learning-rate schedule of MMAudio and the NAG paper (App. D): linear warm-up, then two
drops by 10x at 80% and 90% of the steps."""

from __future__ import annotations


def lr_multiplier(step: int, total_steps: int, warmup_steps: int) -> float:
    """Factor applied to the base learning rate at optimizer step `step` (0-based). A warm-up
    longer than 80 % of the steps is cut there, so that the drops come after it (both happen in
    any run of 10 steps or more)."""
    warmup_steps = min(warmup_steps, int(0.8 * total_steps))
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    factor = 1.0
    if step >= 0.8 * total_steps:
        factor *= 0.1
    if step >= 0.9 * total_steps:
        factor *= 0.1
    return factor
