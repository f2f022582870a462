"""The real MMAudio audio codec stack: mel converters (mel.py), the mel VAE (vae.py), the
BigVGAN vocoders (bigvgan.py, bigvgan_v2.py), bundled by MMAudioCodec (mmaudio_codec.py).

    from stepfoley.engine.codec.mmaudio_codec import MMAudioCodec
    codec = MMAudioCodec.from_directory("~/mmaudio-weights", mode="16k")
"""
