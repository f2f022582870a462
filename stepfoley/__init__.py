"""StepFoley: step-by-step video-to-Foley with Negative Audio Guidance."""

__version__ = "0.1.0"

# where the docs the messages name (docs/...) are for an install without a checkout
DOCS_URL = "https://github.com/stepfoley/stepfoley/tree/main/docs"
