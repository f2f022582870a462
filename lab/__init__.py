"""The StepFoley lab: training (training/), evaluation (evaluation/), the procedural mini-world
(miniworld/) and the demo (demo.py). It builds and measures what the engine serves.

The lab may import the engine; the engine and the bridge never import the lab
(tests/test_serving_imports.py checks both). Importing this package does not import torch.
"""
