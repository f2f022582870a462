"""StepFoley: step-by-step video-to-Foley with Negative Audio Guidance."""

__version__ = "0.1.0"
