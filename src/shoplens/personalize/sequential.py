"""A learned sequential customer model (SASRec-style), recommender name ``sequential``.

A small causal transformer reads a customer's last ``max_len`` events and predicts the next
item. Every item is a vector ``proj([image ⊕ text]) + id`` in the model's space: a learned
projection of its frozen *content* embeddings, plus (``id_embeddings=True``) a learned id
embedding that only items with training events have (dropped at random while training, so
the model also learns to rank by content). Items without events, e.g. products added
after training (:meth:`SequentialRecommender.update_items`), are therefore scorable, by
content alone. The content features are reduced by PCA to ``content_dim`` first. Each
input position also adds an event-type embedding, a time-gap bucket embedding (time since
the previous event) and a position embedding.

Training uses :func:`shoplens.training.fit` (on CPU) on windows of the customers'
sequences: at every position the next item is the target of a sampled softmax against
uniformly drawn negatives (targets the customer already saw in the window are skipped,
since recommendations leave seen items out). The customer vector is the output at the last
position; an item's score is ``d_model ** -0.5`` x its dot product with that vector. An
empty history gets the mean vector of the training customers.
"""

from __future__ import annotations

import tempfile
from collections.abc import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from shoplens.errors import InvalidInputError
from shoplens.personalize.types import EVENT_TYPES, History, Interactions, ItemSpace, top_k_rows

# Upper edges (seconds) of the time-gap buckets; bucket 0 is "first event of the window".
GAP_EDGES = np.array(
    [60, 600, 3600, 6 * 3600, 86400, 3 * 86400, 7 * 86400, 30 * 86400], dtype=np.float64
)
N_GAP_BUCKETS = len(GAP_EDGES) + 2


def content_matrix(items: ItemSpace) -> np.ndarray:
    """(N, D [+ Dt]) float32 frozen content features: image ⊕ text embeddings."""
    parts = [items.image] if items.text is None else [items.image, items.text]
    return np.ascontiguousarray(np.concatenate(parts, axis=1), dtype=np.float32)


class ContentReducer:
    """PCA of the content features to at most ``dim`` components (fit on a sample)."""

    def __init__(self, content: np.ndarray, dim: int, seed: int = 0, sample: int = 20_000) -> None:
        rng = np.random.default_rng(seed)
        rows = content if len(content) <= sample else content[rng.choice(len(content), sample)]
        self.in_dim = content.shape[1]
        self.mean = rows.mean(axis=0).astype(np.float32)  # (Dc,)
        if dim >= self.in_dim:
            self.components = np.eye(self.in_dim, dtype=np.float32)  # (Dc, Dc): no reduction
        else:
            centred = (rows - self.mean).astype(np.float64)
            _, vecs = np.linalg.eigh(centred.T @ centred)  # ascending eigenvalues
            self.components = np.ascontiguousarray(vecs[:, ::-1][:, :dim], dtype=np.float32)

    @property
    def out_dim(self) -> int:
        return int(self.components.shape[1])

    def __call__(self, content: np.ndarray) -> np.ndarray:
        """(N, Dc) -> (N, k) float32."""
        if content.shape[1] != self.in_dim:
            raise InvalidInputError(
                f"sequential: items have {content.shape[1]} content dims, the model "
                f"{self.in_dim}: refit after changing encoders"
            )
        return np.ascontiguousarray((content - self.mean) @ self.components, dtype=np.float32)


def gap_buckets(timestamps: np.ndarray) -> np.ndarray:
    """(L,) Unix seconds -> (L,) int64 bucket of the gap to the previous event (0 first)."""
    out = np.zeros(len(timestamps), dtype=np.int64)
    if len(timestamps) > 1:
        gaps = np.diff(np.asarray(timestamps, dtype=np.float64))  # (L-1,)
        out[1:] = np.searchsorted(GAP_EDGES, gaps, side="right") + 1
    return out


class SequenceWindows(Dataset[dict[str, Tensor]]):
    """Training windows of up to ``max_len`` inputs, each with its next-item targets.

    Sample: ``items``, ``types``, ``gaps``, ``targets`` (max_len,) int64, right-padded
    (items with 0, targets with -1); ``targets[t]`` is the item after input ``t``, or -1
    where there is none or the customer already saw it earlier in the window.
    """

    def __init__(self, histories: Sequence[History], max_len: int) -> None:
        self.max_len = max_len
        self.windows: list[tuple[History, int, int]] = []  # (history, start, stop) of inputs
        for h in histories:
            n = len(h)
            stop = n - 1  # inputs [start, stop), targets [start + 1, stop + 1)
            while stop > 0:
                start = max(0, stop - max_len)
                self.windows.append((h, start, stop))
                stop = start

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, i: int) -> dict[str, Tensor]:
        h, start, stop = self.windows[i]
        n, m = stop - start, self.max_len
        items = np.zeros(m, np.int64)
        types = np.zeros(m, np.int64)
        gaps = np.zeros(m, np.int64)
        targets = np.full(m, -1, np.int64)
        items[:n] = h.items[start:stop]
        types[:n] = h.types[start:stop]
        gaps[:n] = gap_buckets(h.timestamps[start:stop])
        nxt = h.items[start + 1 : stop + 1]  # (n,)
        seen: set[int] = set()
        for t in range(n):
            seen.add(int(items[t]))
            if int(nxt[t]) not in seen:
                targets[t] = nxt[t]
        return {
            "items": torch.from_numpy(items),
            "types": torch.from_numpy(types),
            "gaps": torch.from_numpy(gaps),
            "targets": torch.from_numpy(targets),
        }


class SequentialNet(nn.Module):
    """Item tower (content projection + warm-item id embedding) and a causal transformer."""

    content: Tensor
    warm: Tensor

    def __init__(
        self,
        content: np.ndarray,
        warm: np.ndarray,
        d_model: int,
        layers: int,
        heads: int,
        max_len: int,
        id_embeddings: bool,
        dropout: float,
        id_dropout: float,
        num_negatives: int,
    ) -> None:
        super().__init__()
        n, dc = content.shape
        self.d_model, self.max_len = d_model, max_len
        self.id_dropout, self.num_negatives = id_dropout, num_negatives
        self.scale = d_model**-0.5  # logits = scale * <customer, item>
        # Frozen inputs: not in state_dict (checkpoints stay small), dropped after fit.
        self.register_buffer("content", torch.from_numpy(content), persistent=False)  # (N, Dc)
        self.register_buffer("warm", torch.from_numpy(warm.astype(np.float32)), persistent=False)
        self.content_proj = nn.Sequential(nn.Linear(dc, d_model), nn.LayerNorm(d_model))
        self.id_emb = nn.Embedding(n, d_model) if id_embeddings else None
        if self.id_emb is not None:
            nn.init.normal_(self.id_emb.weight, std=0.02)
        self.type_emb = nn.Embedding(len(EVENT_TYPES), d_model)
        self.gap_emb = nn.Embedding(N_GAP_BUCKETS, d_model)
        self.pos_emb = nn.Embedding(max_len, d_model)
        for emb in (self.type_emb, self.gap_emb, self.pos_emb):
            nn.init.normal_(emb.weight, std=0.02)
        layer = nn.TransformerEncoderLayer(
            d_model,
            heads,
            dim_feedforward=2 * d_model,
            dropout=dropout,
            activation="gelu",
            batch_first=True,
            norm_first=True,
        )
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.in_drop = nn.Dropout(dropout)
        self.out_norm = nn.LayerNorm(d_model)

    def item_vectors(self, idx: Tensor) -> Tensor:
        """(M,) item indices -> (M, d) item vectors (ids dropped at random in training)."""
        vec = self.content_proj(self.content[idx])  # (M, d)
        if self.id_emb is not None:
            keep = self.warm[idx]  # (M,) 1 for items with training events
            if self.training and self.id_dropout > 0:
                keep = keep * (torch.rand_like(keep) >= self.id_dropout).float()
            vec = vec + self.id_emb(idx) * keep[:, None]
        return vec

    def encode(self, item_vecs: Tensor, types: Tensor, gaps: Tensor) -> Tensor:
        """Input item vectors (B, L, d), types (B, L), gap buckets (B, L) -> (B, L, d)."""
        length = item_vecs.shape[1]
        pos = torch.arange(length, device=item_vecs.device)  # (L,)
        x = item_vecs + self.type_emb(types) + self.gap_emb(gaps) + self.pos_emb(pos)[None]
        causal = torch.triu(
            torch.full((length, length), float("-inf"), device=x.device), diagonal=1
        )  # (L, L)
        h = self.encoder(self.in_drop(x), mask=causal)  # (B, L, d)
        return self.out_norm(h)

    def training_step(self, batch: dict[str, Tensor]) -> dict[str, Tensor]:
        """Sampled softmax of each next item against uniform negatives."""
        items, targets = batch["items"], batch["targets"]  # (B, L), (B, L)
        b, length = items.shape
        n_items = self.content.shape[0]
        k = min(self.num_negatives, n_items)
        neg = torch.randint(n_items, (k,), device=items.device)  # (K,)
        sel = targets >= 0  # (B, L)
        pos_items = targets[sel]  # (P,)
        idx = torch.cat([items.reshape(-1), pos_items, neg])
        vecs = self.item_vectors(idx)  # (B*L + P + K, d)
        inputs = vecs[: b * length].reshape(b, length, -1)  # (B, L, d)
        pos_vecs = vecs[b * length : b * length + len(pos_items)]  # (P, d)
        neg_vecs = vecs[b * length + len(pos_items) :]  # (K, d)
        h = self.encode(inputs, batch["types"], batch["gaps"])[sel] * self.scale  # (P, d)
        pos_logit = (h * pos_vecs).sum(-1, keepdim=True)  # (P, 1)
        neg_logit = h @ neg_vecs.T  # (P, K)
        neg_logit = neg_logit.masked_fill(neg[None, :] == pos_items[:, None], float("-inf"))
        logits = torch.cat([pos_logit, neg_logit], dim=1)  # (P, 1 + K)
        labels = torch.zeros(len(pos_items), dtype=torch.long, device=items.device)
        if len(pos_items) == 0:  # a batch without targets: a zero loss that keeps the graph
            loss = logits.sum() * 0.0 + vecs.sum() * 0.0
            return {"loss": loss}
        loss = F.cross_entropy(logits, labels)
        with torch.no_grad():
            acc = (logits.argmax(dim=1) == 0).float().mean()
        return {"loss": loss, "accuracy": acc}


class SequentialRecommender:
    """Causal-transformer customer model over content-based item vectors (``sequential``)."""

    name = "sequential"

    def __init__(
        self,
        d_model: int = 64,
        layers: int = 2,
        heads: int = 2,
        max_len: int = 50,
        epochs: int = 10,
        batch_size: int = 128,
        lr: float = 3e-3,
        id_embeddings: bool = True,
        seed: int = 0,
        run_dir: str | None = None,
        dropout: float = 0.2,
        id_dropout: float = 0.25,
        num_negatives: int = 1024,
        weight_decay: float = 0.01,
        content_dim: int = 128,
        num_threads: int | None = 1,
        infer_batch: int = 512,
    ) -> None:
        if d_model % heads:
            raise InvalidInputError(f"sequential: d_model={d_model} not divisible by {heads}")
        self.d_model, self.layers, self.heads, self.max_len = d_model, layers, heads, max_len
        self.epochs, self.batch_size, self.lr = epochs, batch_size, lr
        self.id_embeddings, self.seed, self.run_dir = id_embeddings, seed, run_dir
        self.dropout, self.id_dropout, self.num_negatives = dropout, id_dropout, num_negatives
        self.weight_decay, self.infer_batch = weight_decay, infer_batch
        self.content_dim, self.num_threads = content_dim, num_threads
        self.reducer: ContentReducer | None = None
        self.net: SequentialNet | None = None
        self.item_matrix = np.zeros((0, d_model), np.float32)  # (N, d) after fit
        self.prior = np.zeros(d_model, np.float32)  # (d,) vector of a customer without events
        self.skus: list[str] = []  # the fit-time items (rows of the id embedding)
        self.warm = np.zeros(0, bool)  # (N,) items with training events
        self.history: list[dict[str, float]] = []  # per-epoch training metrics

    # -- training --------------------------------------------------------------------

    def fit(self, train: Interactions, items: ItemSpace) -> None:
        """Train the transformer on ``train``'s sequences (CPU, shoplens training loop)."""
        from shoplens.training import TrainConfig, fit

        n = len(items)
        self.history = []
        warm = np.zeros(n, bool)
        warm[train.items] = True
        histories = [h for h in train.histories() if len(h) >= 2]
        data = SequenceWindows(histories, self.max_len)
        self.reducer = ContentReducer(content_matrix(items), self.content_dim, self.seed)
        torch.manual_seed(self.seed)
        net = SequentialNet(
            self.reducer(content_matrix(items)),
            warm,
            self.d_model,
            self.layers,
            self.heads,
            self.max_len,
            self.id_embeddings,
            self.dropout,
            self.id_dropout,
            self.num_negatives,
        )
        self.skus, self.warm = list(items.skus), warm
        if len(data):
            cfg = TrainConfig(
                epochs=self.epochs,
                batch_size=min(self.batch_size, len(data)),
                lr=self.lr,
                weight_decay=self.weight_decay,
                warmup_ratio=0.05,
                seed=self.seed,
                device="cpu",
                log_every=10**6,
            )
            threads = torch.get_num_threads()
            try:
                if self.num_threads:
                    torch.set_num_threads(self.num_threads)
                with tempfile.TemporaryDirectory(prefix="shoplens-seq-") as tmp:
                    result = fit(net, data, cfg, run_dir=self.run_dir or tmp, resume=False)
            finally:
                torch.set_num_threads(threads)
            self.history = result.history
        net.cpu().eval()
        self.net = net
        self.item_matrix = self._item_matrix(net)
        net.content = torch.zeros(0, net.content.shape[1])  # not needed after fit
        fitted = train.histories()
        sample = [h for h in fitted if len(h)][:2000]
        self.prior = (
            self.customer_vectors(sample).mean(axis=0).astype(np.float32)
            if sample
            else np.zeros(self.d_model, np.float32)
        )

    def update_items(self, items: ItemSpace) -> None:
        """Re-embed the items of a changed catalogue without retraining.

        Items known at fit time (same sku) keep their id embedding; new ones are scored
        by their content alone (cold start).
        """
        net = self._require()
        assert self.reducer is not None
        content = self.reducer(content_matrix(items))  # (N', k)
        old = {s: i for i, s in enumerate(self.skus)}
        rows = np.array([old.get(s, -1) for s in items.skus], dtype=np.int64)  # (N',)
        known = rows >= 0
        warm = np.zeros(len(rows), bool)
        warm[known] = self.warm[rows[known]]
        if net.id_emb is not None:
            table = torch.zeros(len(rows), self.d_model)  # (N', d) in the new item order
            table[torch.from_numpy(known)] = net.id_emb.weight.detach()[
                torch.from_numpy(rows[known])
            ]
            net.id_emb = nn.Embedding.from_pretrained(table, freeze=True)
        net.content = torch.from_numpy(content)
        net.warm = torch.from_numpy(warm.astype(np.float32))
        self.item_matrix = self._item_matrix(net)
        net.content = torch.zeros(0, content.shape[1])
        self.skus, self.warm = list(items.skus), warm

    # -- inference -------------------------------------------------------------------

    def customer_vectors(self, histories: Sequence[History]) -> np.ndarray:
        """(B, d) float32 customer vectors (the prior vector for an empty history)."""
        net = self._require()
        out = np.empty((len(histories), self.d_model), np.float32)
        table = torch.from_numpy(self.item_matrix)  # (N, d)
        for lo in range(0, len(histories), self.infer_batch):
            chunk = histories[lo : lo + self.infer_batch]
            lengths = np.array([min(len(h), self.max_len) for h in chunk])  # (b,)
            width = max(1, int(lengths.max()) if len(lengths) else 1)
            items = np.zeros((len(chunk), width), np.int64)
            types = np.zeros((len(chunk), width), np.int64)
            gaps = np.zeros((len(chunk), width), np.int64)
            for r, h in enumerate(chunk):
                m = lengths[r]
                if m:
                    items[r, :m] = h.items[-m:]
                    types[r, :m] = h.types[-m:]
                    gaps[r, :m] = gap_buckets(h.timestamps[-m:])
            with torch.inference_mode():
                vecs = table[torch.from_numpy(items)]  # (b, W, d)
                h_out = net.encode(vecs, torch.from_numpy(types), torch.from_numpy(gaps))
                last = torch.from_numpy(np.maximum(lengths - 1, 0))  # (b,)
                cv = h_out[torch.arange(len(chunk)), last].numpy()  # (b, d)
            cv[lengths == 0] = self.prior
            out[lo : lo + len(chunk)] = cv
        return out

    def score_all(self, histories: Sequence[History]) -> np.ndarray:
        """(B, N) float32 score of every item for every history."""
        net = self._require()
        return (self.customer_vectors(histories) * net.scale) @ self.item_matrix.T

    def recommend(
        self, histories: Sequence[History], k: int, exclude_seen: bool = True
    ) -> tuple[np.ndarray, np.ndarray]:
        """Top ``k`` items per history: ((B, k) int64, -1 padded; (B, k) float32)."""
        self._require()
        idx = np.full((len(histories), k), -1, np.int64)
        val = np.full((len(histories), k), -np.inf, np.float32)
        step = max(1, min(self.infer_batch, 2**24 // max(1, len(self.item_matrix))))
        for lo in range(0, len(histories), step):
            chunk = histories[lo : lo + step]
            scores = self.score_all(chunk)  # (b, N)
            exclude = [h.items for h in chunk] if exclude_seen else None
            idx[lo : lo + len(chunk)], val[lo : lo + len(chunk)] = top_k_rows(scores, k, exclude)
        return idx, val

    def ann_vectors(self) -> tuple[np.ndarray, np.ndarray | None]:
        """(N, d) item table (every item can be ranked), for ANN candidates."""
        self._require()
        return self.item_matrix, None

    def ann_queries(self, histories: Sequence[History]) -> np.ndarray:
        """(B, d) scaled customer vectors: inner products with the item table = scores."""
        return self.customer_vectors(histories) * self._require().scale

    def score_items(
        self,
        histories: Sequence[History],
        candidates: np.ndarray,
        queries: np.ndarray | None = None,
    ) -> np.ndarray:
        """(B, C) int64 candidates (-1 padded) -> (B, C) float32 scores (nan for padding).

        ``queries``: this ``ann_queries(histories)`` when the caller has it already.
        """
        cand = np.asarray(candidates, dtype=np.int64)
        cv = self.ann_queries(histories) if queries is None else queries  # (B, d)
        vecs = self.item_matrix[np.maximum(cand, 0)]  # (B, C, d)
        scores = np.einsum("bcd,bd->bc", vecs, cv).astype(np.float32)
        scores[cand < 0] = np.nan
        return scores

    # -- helpers ---------------------------------------------------------------------

    def _require(self) -> SequentialNet:
        if self.net is None:
            raise InvalidInputError("sequential: call fit() before recommending")
        return self.net

    @staticmethod
    def _item_matrix(net: SequentialNet) -> np.ndarray:
        """(N, d) float32 item vectors in eval mode, computed in batches."""
        n = net.content.shape[0]
        out = np.empty((n, net.d_model), np.float32)
        with torch.no_grad():
            for lo in range(0, n, 8192):
                idx = torch.arange(lo, min(n, lo + 8192))
                out[lo : lo + len(idx)] = net.item_vectors(idx).numpy()
        return out

    def train_loss(self) -> list[float]:
        """Mean training loss of each epoch."""
        return [float(r["train/loss"]) for r in self.history if "train/loss" in r]
