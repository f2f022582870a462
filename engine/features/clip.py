"""CLIP as MMAudio uses it: apple/DFN5B-CLIP-ViT-H-14-384 (open_clip "ViT-H-14-378-quickgelu").

* Image features: frames squashed to 384x384, OpenAI mean/std, the ViT-H/14 image tower,
  projected and L2-normalized: (1, T, 1024) for T frames at 8 fps.
* Text features: MMAudio patches open_clip's encode_text to return the hidden state of all
  77 positions after ln_final (no text projection), each L2-normalized: (B, 77, 1024).

Own implementation (see docs/clip.md for why not open_clip): state-dict keys are open_clip's
CLIP layout, so open_clip_pytorch_model.bin / open_clip_model.safetensors load directly; the
BPE tokenizer reads bpe_simple_vocab_16e6.txt.gz from the CLIP directory, else the copy
shipped in vocab/ (MIT, see vocab/LICENSE). Checked against MMAudio's reference with
open_clip's own token ids: tests/test_clip_golden.py.
"""

from __future__ import annotations

import gzip
import html
import json
import os
import re
import sys
import unicodedata
from dataclasses import dataclass, fields, replace
from functools import lru_cache
from pathlib import Path
from typing import Callable, Mapping, Sequence

import torch
import torch.nn as nn
import torch.nn.functional as F

from stepfoley.engine.checkpoints import load_state_dict_file, load_strict
from stepfoley.engine.errors import CheckpointError, InvalidInputError

def _ftfy_map() -> dict[int, str | None]:
    """What ftfy.fix_text (6.x, its defaults) changes in correct UTF-8, as one table: Latin
    ligatures split (ﬁ -> fi, ĳ -> ij), fullwidth and halfwidth forms made plain (ＡＢＣ, the
    ideographic space), curly quotes straightened, C1 control characters read as the Windows-1252
    characters they stand for (\x93 -> a quote), and other control characters removed."""
    quotes = {**{chr(i): "'" for i in (0x02BC, *range(0x2018, 0x201C))}, **{chr(i): '"' for i in range(0x201C, 0x2020)}}
    table: dict[int, str | None] = {ord(q): plain for q, plain in quotes.items()}
    for i in (0x132, 0x133, 0x149, *range(0x1C4, 0x1CD), *range(0x1F1, 0x1F4), *range(0xFB00, 0xFB07)):
        table[i] = "".join(quotes.get(c, c) for c in unicodedata.normalize("NFKC", chr(i)))
    table[0xFB05] = "\u017ft"  # ftfy keeps the long s of this one
    table[0x3000] = " "
    for i in range(0xFF01, 0xFFF0):
        plain = unicodedata.normalize("NFKC", chr(i))
        if plain != chr(i):
            table[i] = plain
    for i in range(0x80, 0xA0):
        try:
            windows = bytes([i]).decode("cp1252")
        except UnicodeDecodeError:  # five bytes Windows-1252 leaves undefined stay as they are
            continue
        table[i] = quotes.get(windows, windows)
    # (ftfy keeps the musical notation controls and the tag characters: tags spell the flags of
    # England, Scotland and Wales in emoji)
    controls = [*range(0x00, 0x09), 0x0B, *range(0x0E, 0x20), 0x7F, *range(0x206A, 0x2070), 0xFEFF,
                *range(0xFFF9, 0xFFFD)]
    table.update(dict.fromkeys(controls))
    return table


_FTFY_MAP = _ftfy_map()

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"
SHIPPED_VOCAB = Path(__file__).resolve().parent / "vocab" / VOCAB_FILE
WEIGHT_FILES = ("open_clip_model.safetensors", "open_clip_pytorch_model.safetensors",
                "open_clip_pytorch_model.bin")
# In the checkpoint but not needed for features (logit_bias exists only in SigLIP-style models).
IGNORED_KEYS = frozenset({"logit_scale", "logit_bias", "attn_mask"})


@dataclass(frozen=True)
class ClipConfig:
    embed_dim: int = 1024
    image_size: int = 378  # sets the positional grid (27); MMAudio feeds 384 px, conv floors to 27
    patch_size: int = 14
    vision_width: int = 1280
    vision_layers: int = 32
    vision_head_width: int = 80
    context_length: int = 77
    vocab_size: int = 49408
    text_width: int = 1024
    text_heads: int = 16
    text_layers: int = 24
    mlp_ratio: float = 4.0
    quick_gelu: bool = True
    norm_eps: float = 1e-5

    @property
    def grid(self) -> int:
        return self.image_size // self.patch_size

    @classmethod
    def in_folder(cls, folder: str | Path) -> "ClipConfig":
        """The sizes in `folder`'s open_clip_config.json, or DFN5B's where it has none (the file is
        optional). Something else under its name is refused: a folder or a link to nothing was
        passed over for DFN5B's sizes without a word, and a pipe would be read forever."""
        path = Path(folder) / "open_clip_config.json"
        if not os.path.lexists(path):
            return cls()
        if not path.is_file():
            raise CheckpointError(f"{path} is not a file; put apple/DFN5B-CLIP-ViT-H-14-384's open_clip_config.json "
                                  "there, or remove what stands under its name (without it, DFN5B's sizes are used).")
        return cls.from_open_clip_json(path)

    @classmethod
    def from_open_clip_json(cls, path: str | Path) -> "ClipConfig":
        """Read open_clip_config.json (its "model_cfg") as shipped beside the weights."""
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError) as e:  # ValueError: not JSON, or not UTF-8
            raise CheckpointError(f"{path} cannot be read as JSON ({e}); download apple/DFN5B-CLIP-ViT-H-14-384 "
                                  "again.") from None
        model = data.get("model_cfg", data) if isinstance(data, dict) else None
        if not isinstance(model, dict) or not all(isinstance(model.get(k, {}), dict) for k in ("vision_cfg", "text_cfg")):
            raise CheckpointError(f"{path} is not an open_clip model configuration; download "
                                  "apple/DFN5B-CLIP-ViT-H-14-384 again.")
        vision, text = model.get("vision_cfg", {}), model.get("text_cfg", {})
        base = cls()
        cfg = replace(
            base,
            embed_dim=model.get("embed_dim", base.embed_dim),
            quick_gelu=model.get("quick_gelu", base.quick_gelu),
            image_size=vision.get("image_size", base.image_size),
            patch_size=vision.get("patch_size", base.patch_size),
            vision_width=vision.get("width", base.vision_width),
            vision_layers=vision.get("layers", base.vision_layers),
            vision_head_width=vision.get("head_width", base.vision_head_width),
            context_length=text.get("context_length", base.context_length),
            vocab_size=text.get("vocab_size", base.vocab_size),
            text_width=text.get("width", base.text_width),
            text_heads=text.get("heads", base.text_heads),
            text_layers=text.get("layers", base.text_layers),
        )
        for f in fields(cfg):  # each of the default's kind: a whole number above 0 where it is one
            value, default = getattr(cfg, f.name), getattr(base, f.name)
            if isinstance(default, bool):
                fits = isinstance(value, bool)
            elif isinstance(default, int):
                fits = isinstance(value, int) and not isinstance(value, bool) and value > 0
            else:
                fits = isinstance(value, (int, float)) and not isinstance(value, bool)
            if not fits:
                raise CheckpointError(f"{path} sets {f.name} to {value!r}, which no CLIP has; download "
                                      "apple/DFN5B-CLIP-ViT-H-14-384 again.")
        return cfg


# ---------------------------------------------------------------------------------------------
# network


class SelfAttention(nn.Module):
    """nn.MultiheadAttention's parameter names (packed [q; k; v] in_proj), SDPA arithmetic."""

    def __init__(self, width: int, heads: int):
        super().__init__()
        self.heads = heads
        self.in_proj_weight = nn.Parameter(torch.empty(3 * width, width))
        self.in_proj_bias = nn.Parameter(torch.zeros(3 * width))
        self.out_proj = nn.Linear(width, width)
        nn.init.xavier_uniform_(self.in_proj_weight)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        # x: (B, L, W)
        b, length, width = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).chunk(3, dim=-1)
        q, k, v = (t.reshape(b, length, self.heads, -1).transpose(1, 2) for t in (q, k, v))
        out = F.scaled_dot_product_attention(q, k, v, is_causal=causal)
        return self.out_proj(out.transpose(1, 2).reshape(b, length, width))


class Mlp(nn.Module):
    def __init__(self, width: int, hidden: int, quick_gelu: bool):
        super().__init__()
        self.c_fc = nn.Linear(width, hidden)
        self.c_proj = nn.Linear(hidden, width)
        self.quick_gelu = quick_gelu

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        # x: (B, L, width) -> (B, L, width)
        h = self.c_fc(x)
        # DFN5B was trained with QuickGELU; plain GELU would silently shift every feature
        h = h * torch.sigmoid(1.702 * h) if self.quick_gelu else F.gelu(h)
        return self.c_proj(h)


class ResidualAttentionBlock(nn.Module):
    def __init__(self, width: int, heads: int, cfg: ClipConfig):
        super().__init__()
        self.ln_1 = nn.LayerNorm(width, eps=cfg.norm_eps)
        self.attn = SelfAttention(width, heads)
        self.ln_2 = nn.LayerNorm(width, eps=cfg.norm_eps)
        self.mlp = Mlp(width, int(width * cfg.mlp_ratio), cfg.quick_gelu)

    def forward(self, x: torch.Tensor, causal: bool) -> torch.Tensor:
        # x: (B, L, width) -> (B, L, width)
        x = x + self.attn(self.ln_1(x), causal)
        return x + self.mlp(self.ln_2(x))


class Transformer(nn.Module):
    def __init__(self, width: int, layers: int, heads: int, cfg: ClipConfig):
        super().__init__()
        self.resblocks = nn.ModuleList(ResidualAttentionBlock(width, heads, cfg) for _ in range(layers))

    def forward(self, x: torch.Tensor, causal: bool = False) -> torch.Tensor:
        # x: (B, L, width) -> (B, L, width)
        for block in self.resblocks:
            x = block(x, causal)
        return x


class VisionTower(nn.Module):
    def __init__(self, cfg: ClipConfig):
        super().__init__()
        width = cfg.vision_width
        self.cfg = cfg
        self.conv1 = nn.Conv2d(3, width, cfg.patch_size, stride=cfg.patch_size, bias=False)
        self.class_embedding = nn.Parameter(torch.zeros(width))
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.grid * cfg.grid + 1, width))
        self.ln_pre = nn.LayerNorm(width, eps=cfg.norm_eps)
        self.transformer = Transformer(width, cfg.vision_layers, width // cfg.vision_head_width, cfg)
        self.ln_post = nn.LayerNorm(width, eps=cfg.norm_eps)
        self.proj = nn.Parameter(torch.zeros(width, cfg.embed_dim))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # images: (N, 3, S, S) normalized -> (N, embed_dim), not yet L2-normalized
        x = self.conv1(images)  # (N, W, g, g); a 384 px input leaves 6 px unused, as in open_clip
        if x.shape[-1] != self.cfg.grid or x.shape[-2] != self.cfg.grid:
            raise InvalidInputError(
                f"CLIP frames of {images.shape[-2]}x{images.shape[-1]} px give a "
                f"{x.shape[-2]}x{x.shape[-1]} patch grid; this model needs {self.cfg.grid}x{self.cfg.grid}.")
        x = x.flatten(2).transpose(1, 2)  # (N, g*g, W)
        cls = self.class_embedding.to(x.dtype).expand(x.shape[0], 1, -1)
        x = torch.cat((cls, x), dim=1) + self.positional_embedding.to(x.dtype)
        x = self.transformer(self.ln_pre(x))
        return self.ln_post(x[:, 0]) @ self.proj


class ClipModel(nn.Module):
    """open_clip CLIP layout: the text tower at the root, the image tower under `visual`."""

    def __init__(self, cfg: ClipConfig = ClipConfig()):
        super().__init__()
        self.cfg = cfg
        self.visual = VisionTower(cfg)
        self.token_embedding = nn.Embedding(cfg.vocab_size, cfg.text_width)
        self.positional_embedding = nn.Parameter(torch.zeros(cfg.context_length, cfg.text_width))
        self.transformer = Transformer(cfg.text_width, cfg.text_layers, cfg.text_heads, cfg)
        self.ln_final = nn.LayerNorm(cfg.text_width, eps=cfg.norm_eps)
        # unused by MMAudio's per-token features, kept so the checkpoint loads strictly
        self.text_projection = nn.Parameter(torch.zeros(cfg.text_width, cfg.embed_dim))

    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        # images: (N, 3, 384, 384) normalized -> (N, embed_dim), unit norm
        return F.normalize(self.visual(images), dim=-1)

    def encode_text_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        # tokens: (B, 77) int64 -> (B, 77, text_width), every position unit norm (MMAudio's patch)
        x = self.token_embedding(tokens) + self.positional_embedding
        x = self.ln_final(self.transformer(x, causal=True))
        return F.normalize(x, dim=-1)


def load_clip_weights(model: ClipModel, state_dict: Mapping[str, torch.Tensor],
                      source: str = "the CLIP checkpoint", assign: bool = False) -> None:
    weights = {k: v for k, v in state_dict.items() if k not in IGNORED_KEYS}
    load_strict(model, weights, f"{source} is not an open_clip DFN5B ViT-H/14 checkpoint",
                "Download open_clip_pytorch_model.bin of apple/DFN5B-CLIP-ViT-H-14-384 again.", assign=assign,
                source=source)


def find_weight_file(clip_dir: Path) -> Path:
    for name in WEIGHT_FILES:
        if (clip_dir / name).is_file():
            return clip_dir / name
    raise CheckpointError(
        f"No CLIP weights in {clip_dir}: expected one of {', '.join(WEIGHT_FILES)} "
        "(the files of apple/DFN5B-CLIP-ViT-H-14-384).")


def load_clip(clip_dir: str | Path, cfg: ClipConfig | None = None) -> ClipModel:
    """Build from open_clip_config.json when present (else the DFN5B defaults) and load weights."""
    clip_dir = Path(clip_dir)
    path = find_weight_file(clip_dir)  # before building: a full-size model takes seconds
    if cfg is None:
        cfg = ClipConfig.in_folder(clip_dir)
    with torch.device("meta"):  # given the file's tensors: ~4 GB never held twice
        model = ClipModel(cfg)
    load_clip_weights(model, load_state_dict_file(path), source=str(path), assign=True)
    return model.float().eval()


def clip_normalize(frames: torch.Tensor) -> torch.Tensor:
    """(T, 3, H, W) uint8 (0-255), or float in [0, 1] as MMAudio feeds them -> float in CLIP's
    normalized range."""
    mean = torch.tensor(CLIP_MEAN, device=frames.device).view(1, 3, 1, 1)
    std = torch.tensor(CLIP_STD, device=frames.device).view(1, 3, 1, 1)
    unit = frames.float() / 255.0 if frames.dtype == torch.uint8 else frames.float()
    return (unit - mean) / std


@torch.inference_mode()
def encode_clip_frames(model: ClipModel, frames: torch.Tensor, batch_frames: int | None = None,
                       on_progress: Callable[[int], None] | None = None) -> torch.Tensor:
    """(T, 3, 384, 384) at 8 fps, uint8 or float in [0, 1] -> (1, T, embed_dim), frames batched
    through the tower;
    `on_progress(frames_done)` after each batch."""
    param = next(model.parameters())
    x = clip_normalize(frames.to(param.device)).to(param.dtype)
    step = batch_frames or max(1, x.shape[0])
    parts = []
    for i in range(0, x.shape[0], step):
        parts.append(model.encode_image(x[i:i + step]))
        if on_progress is not None:
            on_progress(min(i + step, x.shape[0]))
    return torch.cat(parts, dim=0)[None]


# ---------------------------------------------------------------------------------------------
# tokenizer


@lru_cache(maxsize=1)
def bytes_to_unicode() -> dict[int, str]:
    """Reversible byte -> printable character map of the CLIP/GPT-2 BPE (no whitespace or
    control characters, so merges can be written in a text file)."""
    printable = (list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
                 + list(range(ord("®"), ord("ÿ") + 1)))
    # insertion order matters: the vocabulary lists printable bytes first, then the rest
    mapping = {b: chr(b) for b in printable}
    others = [b for b in range(256) if b not in mapping]
    mapping.update({b: chr(256 + n) for n, b in enumerate(others)})
    return mapping


@lru_cache(maxsize=1)
def token_pattern() -> re.Pattern:
    """The reference's pre-tokenizer pattern, which uses \\p{L} / \\p{N} (the `regex` module), in
    `re`: letters are word characters that are neither numbers nor "_", numbers are decimal
    digits and the other numbers (² ½ ① Ⅻ: categories Nl and No, word characters to `re`, which
    joined them to the letters beside them)."""
    codes = [i for i in range(sys.maxunicode + 1) if unicodedata.category(chr(i)) in ("Nl", "No")]
    # as ranges (80 of them, not 1,131 characters: a class that long made each caption 30 times slower)
    runs = [[codes[0], codes[0]]]
    for code in codes[1:]:
        if code == runs[-1][1] + 1:
            runs[-1][1] = code
        else:
            runs.append([code, code])
    other_numbers = "".join(re.escape(chr(a)) + (f"-{re.escape(chr(b))}" if b > a else "") for a, b in runs)
    return re.compile(r"<start_of_text>|<end_of_text>|'s|'t|'re|'ve|'m|'ll|'d|"
                      rf"[^\W\d_{other_numbers}]+|[\d{other_numbers}]|(?:[^\s\w]|_)+", re.IGNORECASE)
_MAX_MERGES = 49152 - 256 - 2


def find_bpe_vocab(clip_dir: str | Path | None = None) -> Path:
    """The BPE merges file: a copy in the CLIP directory (gzipped or not), else the one shipped
    with StepFoley (the model hub does not ship it with the DFN5B weights)."""
    candidates = [SHIPPED_VOCAB]
    if clip_dir is not None:
        candidates[:0] = [Path(clip_dir) / VOCAB_FILE, Path(clip_dir) / VOCAB_FILE[:-3]]
    for path in candidates:
        if path.is_file():
            return path
    raise CheckpointError(
        f"The CLIP tokenizer vocabulary {VOCAB_FILE} was not found{f' in {clip_dir}' if clip_dir else ''}, "
        f"and the copy that comes with StepFoley ({SHIPPED_VOCAB}) is missing: reinstall StepFoley.")


class ClipTokenizer:
    """open_clip's SimpleTokenizer: clean, lower-case, byte-level BPE, <start>/<end>, pad to 77."""

    def __init__(self, vocab_path: str | Path, context_length: int = 77):
        vocab_path = Path(vocab_path)
        opener = gzip.open if vocab_path.suffix == ".gz" else open
        with opener(vocab_path, "rt", encoding="utf-8") as f:
            lines = f.read().split("\n")
        merges = [tuple(line.split()) for line in lines[1:_MAX_MERGES + 1] if line.strip()]
        self.byte_encoder = bytes_to_unicode()
        vocab = list(self.byte_encoder.values())
        vocab += [v + "</w>" for v in vocab]
        vocab += ["".join(m) for m in merges]
        vocab += ["<start_of_text>", "<end_of_text>"]
        self.encoder = {token: i for i, token in enumerate(vocab)}
        self.merge_rank = {m: i for i, m in enumerate(merges)}
        self.sot = self.encoder["<start_of_text>"]
        self.eot = self.encoder["<end_of_text>"]
        self.context_length = context_length
        self._cache = {"<start_of_text>": "<start_of_text>", "<end_of_text>": "<end_of_text>"}

    @property
    def vocab_size(self) -> int:
        return len(self.encoder)

    @staticmethod
    def clean(text: str) -> str:
        # open_clip runs ftfy.fix_text first; what it does to correct UTF-8 is done here too
        # (its mojibake repairs, for text decoded with the wrong encoding, are not). ftfy
        # unescapes HTML entities first, unless the text holds a "<" (then it may be HTML).
        while "<" not in text and html.unescape(text) != text:  # ftfy fixes until nothing changes
            text = html.unescape(text)
        text = unicodedata.normalize("NFC", text.translate(_FTFY_MAP))
        text = html.unescape(html.unescape(text)).strip()
        return re.sub(r"\s+", " ", text).strip().lower()

    def bpe(self, token: str) -> list[str]:
        if token in self._cache:
            return self._cache[token].split(" ")
        word = list(token[:-1]) + [token[-1] + "</w>"]
        while len(word) > 1:
            pairs = {(word[i], word[i + 1]) for i in range(len(word) - 1)}
            best = min(pairs, key=lambda p: self.merge_rank.get(p, float("inf")))
            if best not in self.merge_rank:
                break
            merged, i = [], 0
            while i < len(word):
                if i < len(word) - 1 and (word[i], word[i + 1]) == best:
                    merged.append(word[i] + word[i + 1])
                    i += 2
                else:
                    merged.append(word[i])
                    i += 1
            word = merged
        self._cache[token] = " ".join(word)
        return word

    def encode(self, text: str) -> list[int]:
        ids = []
        for token in token_pattern().findall(self.clean(text)):
            token = "".join(self.byte_encoder[b] for b in token.encode("utf-8"))
            ids.extend(self.encoder[piece] for piece in self.bpe(token))
        return ids

    def __call__(self, texts: str | Sequence[str]) -> torch.Tensor:
        """(B, context_length) int64; too-long captions are cut and still end with <end>."""
        if isinstance(texts, str):
            texts = [texts]
        out = torch.zeros(len(texts), self.context_length, dtype=torch.long)
        for row, text in enumerate(texts):
            ids = [self.sot] + self.encode(text) + [self.eot]
            if len(ids) > self.context_length:
                ids = ids[:self.context_length]
                ids[-1] = self.eot
            out[row, :len(ids)] = torch.tensor(ids)
        return out
