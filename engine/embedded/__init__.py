"""The embedded default model's CPU parts: video features, text encoder, audio codec.

Import the submodules directly (`engine.embedded.codec`, `.encoders`, `.text`); this package
imports nothing heavy on its own.
"""
