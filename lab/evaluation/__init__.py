"""`stepfoley eval`: the paper's evaluation (Tables 2 and A2) reproduced in the mini-world.

spectra.py      the mel view every figure is measured on (the judging embedding's, from the engine)
metrics.py      the figures: pure functions of waveforms, embeddings and classifier outputs
embedding.py    training the mini-world's CLAP (engine/audio_embedding.py): audio and captions in one space
presence.py     the source-presence classifier (text fidelity, leakage)
store.py        the files of those two networks, and their training loop
stats.py        per-scene means and paired bootstrap intervals over scenes
runner.py       the protocol: scenes, rows (methods and controls), takes, the report
calibration.py  choosing a model's α from plain CFG on development scenes
"""
