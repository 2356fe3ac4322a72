"""Training texts for two-tower models, zero-shot prompts and composed-query modifiers.

A product (title, category, attributes) yields many phrasings: "a photo of an ankle
boot", "ankle boots", "black leather ankle boot", "boot", ..., with per-category synonyms
(``FASHION_MNIST_SYNONYMS``: "tee" / "t-shirt", "sneaker" / "trainer", ...), so a text
tower learns more than ten fixed strings. Sampling is seeded: the same
``(seed, key)`` always gives the same text.

Note: on Fashion-MNIST these texts are derived from the class labels only (in-domain,
hand-written synonyms), so text-to-image results there measure how well the model
learned the label vocabulary, not open-vocabulary understanding.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping, Sequence

import numpy as np

from shoplens.errors import InvalidInputError

# Every class's own name is among its nouns (zero-shot prompts name the class as labelled).
FASHION_MNIST_SYNONYMS: dict[str, tuple[str, ...]] = {
    "T-shirt/top": ("t-shirt", "tee", "top", "tee shirt", "short-sleeved top", "crew neck tee"),
    "Trouser": ("trousers", "pants", "jeans", "slacks", "chinos", "leggings", "trouser"),
    "Pullover": ("pullover", "sweater", "jumper", "knit sweater", "sweatshirt", "cardigan"),
    "Dress": ("dress", "gown", "frock", "summer dress", "midi dress", "evening dress"),
    "Coat": ("coat", "jacket", "overcoat", "parka", "winter coat", "trench coat"),
    "Sandal": ("sandal", "flip-flop", "slide", "strappy sandal", "summer sandal", "heeled sandal"),
    "Shirt": ("shirt", "button-up shirt", "blouse", "dress shirt", "long-sleeved shirt", "flannel"),
    "Sneaker": (
        "sneaker",
        "trainer",
        "running shoe",
        "sports shoe",
        "athletic shoe",
        "canvas shoe",
    ),
    "Bag": ("bag", "handbag", "purse", "tote bag", "shoulder bag", "backpack"),
    "Ankle boot": ("ankle boot", "boot", "bootie", "chelsea boot", "short boot", "heeled boot"),
}

# {a}: "a"/"an"/"" article, {noun}: singular, {plural}, {adj}: attribute words.
PHRASE_TEMPLATES: tuple[str, ...] = (
    "{noun}",
    "{plural}",
    "{a} {noun}",
    "a photo of {a} {noun}",
    "a product photo of {a} {noun}",
    "a picture of {a} {noun}",
    "{noun} for sale",
    "buy {plural} online",
    "new {plural}",
    "{a} stylish {noun}",
)
ATTRIBUTE_TEMPLATES: tuple[str, ...] = ("{adj} {noun}", "{a} {adj} {noun}", "{adj} {plural}")
ZERO_SHOT_TEMPLATES: tuple[str, ...] = (
    "a photo of {a} {noun}.",
    "a product photo of {a} {noun}.",
    "a photo of the {noun}, a type of clothing or accessory.",
    "{a} {noun}.",
)
MODIFIER_TEMPLATES: tuple[str, ...] = (
    "in the {category} category",
    "as {a} {noun}",
    "but {a} {noun}",
    "same style but {a} {noun}",
    "make it {a} {noun}",
    "{noun} instead",
)
IGNORED_ATTRIBUTES = frozenset({"split", "source"})
_PAREN_RE = re.compile(r"\s*\([^)]*\)\s*$")


def _is_plural(noun: str) -> bool:
    """'trousers', 'jeans' (but not 'dress') are already plural."""
    last = noun.split()[-1]
    return last.endswith("s") and not last.endswith("ss")


def plural(noun: str) -> str:
    """English plural of the last word: dress -> dresses, boot -> boots, jeans -> jeans."""
    if _is_plural(noun):
        return noun
    if noun.endswith(("ss", "sh", "ch", "x")):
        return noun + "es"
    return noun + "s"


def article(noun: str) -> str:
    """'a' / 'an' for a singular noun, '' for a plural one."""
    if _is_plural(noun):
        return ""
    return "an" if noun[:1].lower() in "aeiou" else "a"


def _fill(template: str, noun: str, **extra: str) -> str:
    text = template.format(a=article(noun), noun=noun, plural=plural(noun), **extra)
    return " ".join(text.split())  # drop the double space an empty article leaves


def category_nouns(category: str, synonyms: Mapping[str, Sequence[str]]) -> tuple[str, ...]:
    """Nouns for a category: its synonyms, else the lower-cased category name."""
    found = synonyms.get(category)
    if found:
        return tuple(found)
    name = category.strip().lower()
    if not name:
        raise InvalidInputError("a product needs a non-empty category to describe it")
    return (name,)


def _adjectives(attributes: Mapping[str, str] | None) -> list[str]:
    if not attributes:
        return []
    return [str(v).strip().lower() for k, v in sorted(attributes.items()) if
            k not in IGNORED_ATTRIBUTES and str(v).strip()]  # fmt: skip


def _choice(rng: np.random.Generator, items: Sequence[str]) -> str:
    return items[int(rng.integers(len(items)))]


class ProductTexts:
    """Seeded sampler of product phrasings: ``sample(key, category=..., ...)``.

    ``key`` (e.g. ``(index, epoch)``) picks the draw, so results do not depend on call
    order or on DataLoader workers. ``title_p``: chance to return the product title.
    """

    def __init__(
        self,
        seed: int = 0,
        synonyms: Mapping[str, Sequence[str]] = FASHION_MNIST_SYNONYMS,
        title_p: float = 0.2,
    ) -> None:
        self.seed = seed
        self.synonyms = synonyms
        self.title_p = title_p

    def sample(
        self,
        key: int | Sequence[int],
        *,
        category: str,
        title: str = "",
        attributes: Mapping[str, str] | None = None,
    ) -> str:
        """One phrasing for a product; the same (seed, key) gives the same text."""
        keys = [key] if isinstance(key, int) else list(key)
        rng = np.random.default_rng([self.seed, *keys])
        clean_title = _PAREN_RE.sub("", title).strip()
        if clean_title and rng.random() < self.title_p:
            return clean_title
        noun = _choice(rng, category_nouns(category, self.synonyms))
        adjs = _adjectives(attributes)
        if adjs and rng.random() < 0.5:
            k = int(rng.integers(1, len(adjs) + 1))
            adj = " ".join(rng.permutation(adjs)[:k].tolist())
            return _fill(_choice(rng, ATTRIBUTE_TEMPLATES), noun, adj=adj)
        return _fill(_choice(rng, PHRASE_TEMPLATES), noun)

    def all_phrasings(self, category: str, attributes: Mapping[str, str] | None = None) -> set[str]:
        """Every attribute-free and all-attribute phrasing of a category (for inspection)."""
        out: set[str] = set()
        adj = " ".join(_adjectives(attributes))
        for noun in category_nouns(category, self.synonyms):
            out |= {_fill(t, noun) for t in PHRASE_TEMPLATES}
            if adj:
                out |= {_fill(t, noun, adj=adj) for t in ATTRIBUTE_TEMPLATES}
        return out


def zero_shot_prompts(
    category: str, synonyms: Mapping[str, Sequence[str]] = FASHION_MNIST_SYNONYMS
) -> list[str]:
    """Prompts for zero-shot classification of one class (templates x its first noun)."""
    noun = category_nouns(category, synonyms)[0]
    return [_fill(t, noun) for t in ZERO_SHOT_TEMPLATES]


def zero_shot_weights(
    encode_texts: Callable[[list[str]], np.ndarray],
    categories: Sequence[str],
    synonyms: Mapping[str, Sequence[str]] = FASHION_MNIST_SYNONYMS,
) -> np.ndarray:
    """(C, D) class embeddings: the normalised mean of each class's prompt embeddings."""
    rows = []
    for category in categories:
        emb = np.asarray(encode_texts(zero_shot_prompts(category, synonyms)), np.float32)
        mean = emb.mean(axis=0)
        rows.append(mean / max(float(np.linalg.norm(mean)), 1e-12))
    return np.stack(rows)


def modifier_text(
    category: str,
    rng: np.random.Generator,
    synonyms: Mapping[str, Sequence[str]] = FASHION_MNIST_SYNONYMS,
) -> str:
    """A composed-query modifier towards ``category``: "in the ankle boot category", ..."""
    nouns = category_nouns(category, synonyms)
    noun = _choice(rng, nouns)
    return _fill(_choice(rng, MODIFIER_TEMPLATES), noun, category=nouns[0])
