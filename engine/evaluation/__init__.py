"""`stepfoley eval`: the paper's evaluation (Tables 1 and 2) reproduced in the mini-world.

spectra.py    the mel view every figure is measured on
metrics.py    the figures: pure functions of waveforms and embeddings
embedding.py  the mini-world's CLAP: audio and caption embeddings in one space
runner.py     the protocol: scenes, tracks step by step per method, the report
"""
