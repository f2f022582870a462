"""Training: the base flow network and the NAG ControlNet, on precomputed features.

Like MMAudio, training never touches video or audio files in its loop: features are
extracted once (lab.training.features) and the trainer reads tensors.
"""
