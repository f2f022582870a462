"""Video and text feature extractors of the real MMAudio stack: Synchformer (sync features),
CLIP DFN5B ViT-H/14 (frame and text features), and the per-region feature cache."""
