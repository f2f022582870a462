"""engine.features.clip with a small random config of the same code path and key layout, a
reference computed with torch.nn.MultiheadAttention (open_clip's own attention module), and
a BPE tokenizer over a small merges file made here. The real DFN5B weights and vocabulary
are not available offline, so only the arithmetic and the layout are checked."""

import gzip
import json

import pytest
import torch
import torch.nn as nn
import torch.nn.functional as F

from stepfoley.engine.errors import CheckpointError, InvalidInputError
from stepfoley.engine.features.clip import (
    CLIP_MEAN,
    CLIP_STD,
    ClipConfig,
    ClipModel,
    ClipTokenizer,
    bytes_to_unicode,
    encode_clip_frames,
    load_clip,
)

SMALL = ClipConfig(embed_dim=24, image_size=28, patch_size=14, vision_width=32, vision_layers=2,
                   vision_head_width=16, context_length=77, vocab_size=600, text_width=32,
                   text_heads=2, text_layers=2)


def random_model(cfg=SMALL, seed=0) -> ClipModel:
    torch.manual_seed(seed)
    model = ClipModel(cfg).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.randn_like(p) * (0.3 if p.dim() > 1 else 0.1) + (1.0 if name.endswith("ln_1.weight") else 0.0))
    return model


def reference_tower(blocks, x, causal: bool, quick_gelu: bool):
    """open_clip's ResidualAttentionBlock written with nn.MultiheadAttention and an additive mask."""
    length = x.shape[1]
    mask = torch.full((length, length), float("-inf")).triu_(1) if causal else None
    for block in blocks:
        mha = nn.MultiheadAttention(x.shape[-1], block.attn.heads, batch_first=True)
        mha.load_state_dict({"in_proj_weight": block.attn.in_proj_weight,
                             "in_proj_bias": block.attn.in_proj_bias,
                             "out_proj.weight": block.attn.out_proj.weight,
                             "out_proj.bias": block.attn.out_proj.bias})
        y = block.ln_1(x)
        x = x + mha(y, y, y, need_weights=False, attn_mask=mask)[0]
        h = block.mlp.c_fc(block.ln_2(x))
        h = h * torch.sigmoid(1.702 * h) if quick_gelu else F.gelu(h)
        x = x + block.mlp.c_proj(h)
    return x


def test_image_features_match_an_open_clip_style_reference():
    model = random_model()
    frames = torch.randint(0, 256, (5, 3, 30, 30), dtype=torch.uint8)  # 30 px: 2 px left over
    features = encode_clip_frames(model, frames, batch_frames=2)
    assert features.shape == (1, 5, SMALL.embed_dim)
    torch.testing.assert_close(features.norm(dim=-1), torch.ones(1, 5))

    with torch.no_grad():
        x = (frames.float() / 255 - torch.tensor(CLIP_MEAN).view(1, 3, 1, 1)) / torch.tensor(CLIP_STD).view(1, 3, 1, 1)
        v = model.visual
        patches = F.conv2d(x[:, :, :28, :28], v.conv1.weight, stride=14).flatten(2).transpose(1, 2)
        tokens = torch.cat((v.class_embedding.expand(5, 1, -1), patches), 1) + v.positional_embedding
        tokens = reference_tower(v.transformer.resblocks, v.ln_pre(tokens), False, True)
        expected = F.normalize(v.ln_post(tokens[:, 0]) @ v.proj, dim=-1)
    torch.testing.assert_close(features[0], expected, atol=1e-5, rtol=1e-5)


def test_text_features_are_per_token_normalized_hidden_states_with_causal_attention():
    model = random_model()
    tokens = torch.randint(1, SMALL.vocab_size, (2, 77))
    with torch.no_grad():
        features = model.encode_text_tokens(tokens)
        x = model.token_embedding(tokens) + model.positional_embedding
        expected = F.normalize(model.ln_final(reference_tower(model.transformer.resblocks, x, True, True)), dim=-1)
    assert features.shape == (2, 77, SMALL.text_width)
    torch.testing.assert_close(features, expected, atol=1e-5, rtol=1e-5)
    changed = tokens.clone()
    changed[:, 40:] = 7
    with torch.no_grad():
        later = model.encode_text_tokens(changed)
    torch.testing.assert_close(later[:, :40], features[:, :40])  # earlier positions never look ahead
    assert not torch.allclose(later[:, 40:], features[:, 40:])


def test_wrong_frame_size_is_refused():
    with pytest.raises(InvalidInputError, match="patch grid"):
        encode_clip_frames(random_model(), torch.zeros(1, 3, 44, 44, dtype=torch.uint8))


def test_full_size_key_layout_is_open_clips(tmp_path):
    with torch.device("meta"):
        model = ClipModel(ClipConfig())
    shapes = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    assert shapes["visual.conv1.weight"] == (1280, 3, 14, 14)
    assert shapes["visual.positional_embedding"] == (27 * 27 + 1, 1280)
    assert shapes["visual.proj"] == (1280, 1024)
    assert shapes["visual.transformer.resblocks.31.attn.in_proj_weight"] == (3840, 1280)
    assert shapes["visual.transformer.resblocks.31.mlp.c_fc.weight"] == (5120, 1280)
    assert shapes["token_embedding.weight"] == (49408, 1024)
    assert shapes["positional_embedding"] == (77, 1024)
    assert shapes["transformer.resblocks.23.attn.out_proj.weight"] == (1024, 1024)
    assert shapes["text_projection"] == (1024, 1024) and shapes["ln_final.weight"] == (1024,)
    assert not any(".32." in k for k in shapes) and not any("transformer.resblocks.24." in k
                                                              for k in shapes if not k.startswith("visual"))


def test_load_clip_from_an_open_clip_style_directory(tmp_path):
    model = random_model(seed=4)
    state = dict(model.state_dict())
    state["logit_scale"] = torch.tensor(4.6)  # present in real checkpoints, not needed here
    torch.save(state, tmp_path / "open_clip_pytorch_model.bin")
    cfg = {"model_cfg": {"embed_dim": 24, "quick_gelu": True,
                         "vision_cfg": {"image_size": 28, "layers": 2, "width": 32, "head_width": 16,
                                        "patch_size": 14},
                         "text_cfg": {"context_length": 77, "vocab_size": 600, "width": 32,
                                      "heads": 2, "layers": 2}}}
    (tmp_path / "open_clip_config.json").write_text(json.dumps(cfg))
    loaded = load_clip(tmp_path)
    assert loaded.cfg == SMALL
    frames = torch.randint(0, 256, (3, 3, 28, 28), dtype=torch.uint8)
    torch.testing.assert_close(encode_clip_frames(loaded, frames), encode_clip_frames(model, frames))

    del state["visual.proj"]
    torch.save(state, tmp_path / "open_clip_pytorch_model.bin")
    with pytest.raises(CheckpointError, match="missing: visual.proj"):
        load_clip(tmp_path)
    with pytest.raises(CheckpointError, match="No CLIP weights"):
        load_clip(tmp_path / "nowhere")


# ---------------------------------------------------------------------------------------------
# tokenizer

MERGES = ["h e</w>", "t he</w>", "c a", "ca t</w>", "d o", "do g</w>"]


@pytest.fixture
def tokenizer(tmp_path):
    path = tmp_path / "bpe_simple_vocab_16e6.txt.gz"
    with gzip.open(path, "wt", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    return ClipTokenizer(path)


def single(ch: str) -> int:
    return list(bytes_to_unicode().values()).index(ch)


def test_tokenizer_vocabulary_layout(tokenizer):
    assert tokenizer.vocab_size == 512 + len(MERGES) + 2
    assert tokenizer.sot == 512 + len(MERGES) and tokenizer.eot == tokenizer.sot + 1
    assert single("!") == 0 and single(chr(256)) == 188  # printable bytes first, then the rest


def test_tokenizer_merges_cleans_and_splits(tokenizer):
    merged = {m.replace(" ", ""): 512 + i for i, m in enumerate(MERGES)}
    assert tokenizer.encode("  THE   cat ") == [merged["the</w>"], merged["cat</w>"]]
    # "dog's": 's splits off; '&amp;' is unescaped to '&'; "!" is one punctuation token
    assert tokenizer.encode("dog's &amp; hen!") == [
        merged["dog</w>"], single("'"), 256 + single("s"), 256 + single("&"),
        single("h"), single("e"), 256 + single("n"), 256 + single("!")]
    assert tokenizer.encode("é") == [single("Ã"), 256 + single("©")]  # UTF-8 bytes, byte-level BPE


@pytest.mark.parametrize("typed, plain", [
    ("the dog\u2019s \u201cbark\u201d", "the dog's \"bark\""),  # smart quotes, as word processors type them
    ("cafe\u0301", "caf\u00e9"),  # an accent as a separate mark (NFD, macOS file names)
    ("\uff21\uff22\u3000\uff11door", "ab 1door"),  # fullwidth forms and the ideographic space
    ("\ufb01re", "fire"),  # a ligature
    ("\ufeffrain\x07", "rain"),  # a byte-order mark, a control character
    ("the dog&rsquo;s &#xFB01;re", "the dog's fire"),  # entities are unescaped before the rest
    ("the dog&amp;rsquo;s", "the dog's"),  # however deep (ftfy fixes until nothing changes)
    ("\u0132sselmeer \u01c4", "ijsselmeer d\u017e"),  # ligatures beyond the ﬀ block
    ("door\x93slam\x94", 'door"slam"'),  # C1 bytes as Windows-1252 quotes
])
def test_tokenizer_cleans_as_ftfy_does_for_correct_text(typed, plain):
    """open_clip runs ftfy.fix_text: MMAudio's text features were made from the cleaned text."""
    assert ClipTokenizer.clean(typed) == ClipTokenizer.clean(plain)


def test_the_pre_tokenizer_splits_numbers_as_the_references_unicode_classes_do():
    """The reference splits text into \\p{L}+ runs and single \\p{N} characters. `re` counts ² ½ ①
    Ⅻ (categories No and Nl) as word characters, which joined them to the letters beside them:
    "x²" was one token, where MMAudio's text features were made from two."""
    import sys
    import unicodedata

    from stepfoley.engine.features.clip import token_pattern

    assert token_pattern().findall("footsteps in a 10m\u00b2 room") == ["footsteps", "in", "a", "1", "0", "m", "\u00b2",
                                                                     "room"]
    for number in (chr(i) for i in range(sys.maxunicode + 1) if unicodedata.category(chr(i)) in ("Nl", "No")):
        assert token_pattern().findall(f"ab{number}cd") == ["ab", number, "cd"], hex(ord(number))
    assert token_pattern().findall("caf\u00e9 \u4e00\u4e8c") == ["caf\u00e9", "\u4e00\u4e8c"]  # letters stay letters


def test_the_cleaning_keeps_what_ftfy_keeps():
    """ftfy removes control characters but keeps the tag characters (they spell England's,
    Scotland's and Wales' flags in emoji) and the musical notation controls."""
    england = "\U0001f3f4\U000e0067\U000e0062\U000e0065\U000e006e\U000e0067\U000e007f"
    assert ClipTokenizer.clean(f"{england} bagpipes") == f"{england} bagpipes"
    assert ClipTokenizer.clean("\U0001d173drum\U0001d17a") == "\U0001d173drum\U0001d17a"


def test_tokenizer_pads_and_truncates_to_77(tokenizer):
    tokens = tokenizer(["the cat", "dog " * 100])
    assert tokens.shape == (2, 77) and tokens.dtype == torch.long
    assert tokens[0, :4].tolist() == [tokenizer.sot, 513, 515, tokenizer.eot]
    assert (tokens[0, 4:] == 0).all()
    assert tokens[1, 0] == tokenizer.sot and tokens[1, -1] == tokenizer.eot
    assert (tokens[1, 1:-1] == 517).all()


def test_text_encoder_from_an_mmaudio_weights_dir(tmp_path, tokenizer):
    from stepfoley.engine.features.mmaudio_features import MMAudioTextEncoder

    clip_dir = tmp_path / "weights" / "DFN5B-CLIP-ViT-H-14-384"
    clip_dir.mkdir(parents=True)
    cfg = ClipConfig(**{**SMALL.__dict__, "vocab_size": tokenizer.vocab_size})
    model = random_model(cfg, seed=5)
    torch.save(model.state_dict(), clip_dir / "open_clip_pytorch_model.bin")
    with gzip.open(clip_dir / "bpe_simple_vocab_16e6.txt.gz", "wt", encoding="utf-8") as f:
        f.write("#version: 0.2\n" + "\n".join(MERGES) + "\n")
    encoder = MMAudioTextEncoder.from_weights_dir(tmp_path / "weights", clip=model)
    features = encoder.encode(["the cat", "dog"])
    assert features.shape == (2, 77, cfg.text_width)
    with torch.no_grad():
        expected = model.encode_text_tokens(tokenizer(["the cat", "dog"]))
    torch.testing.assert_close(features, expected)
    with pytest.raises(InvalidInputError, match="list of captions"):
        encoder.encode("the cat")
    # what a negative caption of previous captions is fitted to (session.previous_as_negative)
    assert encoder.max_caption_tokens == 75 and encoder.token_count("the cat") == 2
    assert encoder.token_count("dog " * 100) == 100  # uncut, where encode cuts at 75
