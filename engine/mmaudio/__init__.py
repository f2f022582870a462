"""MMAudio's flow-prediction network (an MM-DiT), checkpoint-compatible with the official weights.

Every nn.Module name (network.py, layers.py) is chosen so that `state_dict()` has exactly the keys, shapes and order
of the official `mmaudio_*.pth` files (see golden/manifests/flow_*.json). The arithmetic follows
the reference operation by operation, so float32 results match it to ~1e-6.

Typical use (the sampler runs cond / uncond / NAG rows in one batched forward):

    net = MMAudio(MMAudioConfig.preset("small_16k")); net.load_weights(state_dict)
    cond = net.preprocess_conditions(clip_f, sync_f, text_f)          # once per generation
    empty = net.get_empty_conditions(1)
    v = net.predict_flow(x, t, cond.cat(empty), control=None)         # x: (2B, N, C)

Regions shorter than 8 s: pass the feature sequences of the region and, when they are not the
config's 8 s lengths, `latent_seq_len=` (see `SequenceLengths.for_duration`). Rotary tables and
the sync upsampling index are derived from the actual lengths and cached per length.

What a ControlNet (engine/controlnet.py) can build on:
    net.embed_latent(latent)                (B, N, C) -> (B, N, H), the audio input projection
    net.timestep_embedding(t)               (B,) -> (B, 1, H)
    net.global_conditioning(t, cond)        (B, 1, H) = timestep embedding + global cond MLP
    net.token_conditioning(global_c, cond)  (B, N, H) = global_c + upsampled sync ("extended_c")
    net.latent_rope(N, device)              (1, N, head_dim/2, 2, 2) float32 rotary table
    SingleStreamBlock(hidden_dim, num_heads, mlp_ratio, kernel_size=3)
        forward(x (B, N, H), c (B, N, H), rope) -> (B, N, H); the class of `net.fused_blocks`
    net.num_blocks                          joint + fused blocks; `control[i]` is added after block i

Under torch.autocast(bfloat16) the rotary tables, the rotation and the timestep sinusoids stay
in float32 as in the reference; `predict_flow` returns the latent's dtype.

config.py       MMAudioConfig, the official presets, SequenceLengths
conditions.py   PreprocessedConditions: the features' projections, made once per generation
layers.py       the building blocks (rope, attention, SwiGLU, blocks, final layer, timestep embedder)
network.py      MMAudio: conditions once, then the per-step path; infer_preset
"""

from stepfoley.engine.mmaudio.conditions import PreprocessedConditions
from stepfoley.engine.mmaudio.config import SYNC_FRAMES_PER_SEGMENT, MMAudioConfig, SequenceLengths
from stepfoley.engine.mmaudio.layers import ChannelLastConv1d, SingleStreamBlock, sync_upsample_index
from stepfoley.engine.mmaudio.network import MMAudio, infer_preset

__all__ = ["SYNC_FRAMES_PER_SEGMENT", "ChannelLastConv1d", "MMAudio", "MMAudioConfig", "PreprocessedConditions",
           "SequenceLengths", "SingleStreamBlock", "infer_preset", "sync_upsample_index"]
