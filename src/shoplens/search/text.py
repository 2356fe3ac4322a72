"""BM25 keyword search over product text (bm25s), mapped to product ids."""

from __future__ import annotations

from pathlib import Path

import numpy as np


def tokenize(texts: list[str]) -> list[list[str]]:
    import bm25s

    return bm25s.tokenize(texts, stopwords="en", return_ids=False, show_progress=False)


class Bm25:
    """A saved bm25s index whose documents are the products ``ids`` in order."""

    def __init__(self, retriever: object, ids: np.ndarray) -> None:
        self.retriever = retriever
        self.ids = ids
        self._pos = {int(i): n for n, i in enumerate(ids)}
        self._vocab = set(getattr(retriever, "vocab_dict", {}) or {})

    @classmethod
    def load(cls, path: Path, ids: np.ndarray) -> Bm25:
        import bm25s

        return cls(bm25s.BM25.load(str(path)), ids)

    def search(
        self, text: str, n: int, allowed: np.ndarray | None = None
    ) -> list[tuple[int, float]]:
        """Top-n ``(product id, bm25 score)``; products with score 0 are left out."""
        tokens = [t for t in tokenize([text])[0] if t in self._vocab]
        if not tokens or len(self.ids) == 0:
            return []
        mask = None
        if allowed is not None:
            mask = np.zeros(len(self.ids), dtype=np.float32)
            pos = [self._pos[int(i)] for i in allowed if int(i) in self._pos]
            if not pos:
                return []
            mask[pos] = 1.0
        n = min(n, len(self.ids))
        docs, scores = self.retriever.retrieve(  # type: ignore[attr-defined]
            [tokens], k=n, show_progress=False, weight_mask=mask, n_threads=0
        )
        return [
            (int(self.ids[d]), float(s)) for d, s in zip(docs[0], scores[0], strict=True) if s > 0
        ]
