"""The StepFoley engine: networks, guidance, sampling, audio codecs, video features, mixing.

Nothing here knows about OSC or REAPER. Importing this package does not import torch;
import the submodules you need.
"""
