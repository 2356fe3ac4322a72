"""Conditional image diffusion (family ``diffusion``): a diffusers ``UNet2DConditionModel``
trained with the DDPM noise schedule to predict the added noise (epsilon) or, with
``prediction_type="v_prediction"`` (the published ``diffusion-small``), v.

Images are Fashion-MNIST-style grayscale products padded 28 -> 32 px and scaled to
``[-1, 1]``, one channel. The UNet cross-attends to three conditioning tokens::

    [category]  a learned embedding of the class index
    [text]      a linear projection of the conditioning encoder's text embedding of a prompt
    [taste]     a linear projection of a customer taste vector (the encoder's image space)

Each token is replaced by its own learned *null* token when absent: a category of ``-1``
or an all-zero text / taste row (real embeddings are L2-normalised, never zero). With
``global_cond`` the mean token is also added to the timestep embedding. In training,
every token is dropped independently (``p_drop_*``) and all of them together
(``p_drop_all``), so one model gives the conditional and the unconditional prediction
that classifier-free guidance mixes at sampling time (:mod:`shoplens.generate.pipeline`).

The conditioning encoder (``cond_encoder``, a CLIP-style encoder spec with
``encode_images`` and ``encode_texts``) is recorded in the config and saved with the
weights, so the sampler embeds prompts exactly as training did. Training items come from
:class:`DiffusionDataset` (see :func:`prepare_diffusion_data`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import Dataset

from shoplens.data.fashion_mnist import CLASSES
from shoplens.errors import InvalidInputError, NotFoundError
from shoplens.models.common import RegisteredModel, check_positive
from shoplens.registry import register_model

BetaSchedule = Literal["linear", "scaled_linear", "squaredcos_cap_v2"]
Prediction = Literal["epsilon", "v_prediction"]
TOKENS = ("category", "text", "taste")  # the cross-attention sequence, in this order


@dataclass(frozen=True)
class DiffusionConfig:
    """UNet sizes, conditioning and noise schedule (all saved with the weights)."""

    image_size: int = 32  # the UNet's resolution (28 px products are padded to it)
    crop_size: int = 28  # the products' size: generated images are cropped back to it
    in_channels: int = 1  # grayscale
    block_out_channels: tuple[int, ...] = (32, 64, 128)
    layers_per_block: int = 1
    attention_levels: tuple[bool, ...] = (False, False, True)  # cross-attention per level
    attention_heads: int = 4
    norm_num_groups: int = 32
    token_dim: int = 128  # size of the conditioning tokens (cross_attention_dim)
    global_cond: bool = True  # also add the mean token to the timestep embedding
    class_names: tuple[str, ...] = CLASSES
    cond_encoder: str = ""  # encoder spec of the text / taste embeddings
    embed_dim: int = 128  # the conditioning encoder's embedding size
    num_train_timesteps: int = 1000
    beta_schedule: BetaSchedule = "squaredcos_cap_v2"
    # What the UNet predicts: the added noise, or v = sqrt(a) eps - sqrt(1 - a) x0 (stays
    # well conditioned at the noisiest steps, where x0 from eps is divided by ~sqrt(a) -> 0)
    prediction_type: Prediction = "epsilon"
    p_drop_category: float = 0.2
    p_drop_text: float = 0.4
    p_drop_taste: float = 0.4
    p_drop_all: float = 0.1


def _check(cfg: DiffusionConfig) -> None:
    check_positive(
        "diffusion",
        image_size=cfg.image_size,
        crop_size=cfg.crop_size,
        in_channels=cfg.in_channels,
        layers_per_block=cfg.layers_per_block,
        attention_heads=cfg.attention_heads,
        token_dim=cfg.token_dim,
        embed_dim=cfg.embed_dim,
        num_train_timesteps=cfg.num_train_timesteps,
    )
    levels = len(cfg.block_out_channels)
    if levels < 1 or len(cfg.attention_levels) != levels:
        raise InvalidInputError(
            f"diffusion: attention_levels needs one flag per block_out_channels entry, got "
            f"{list(cfg.attention_levels)} for {list(cfg.block_out_channels)}"
        )
    if cfg.crop_size > cfg.image_size or cfg.image_size % 2 ** (levels - 1):
        raise InvalidInputError(
            f"diffusion: image_size {cfg.image_size} must be >= crop_size {cfg.crop_size} "
            f"and divisible by {2 ** (levels - 1)}"
        )
    if any(c % cfg.norm_num_groups for c in cfg.block_out_channels):
        raise InvalidInputError(
            f"diffusion: block_out_channels {list(cfg.block_out_channels)} must be multiples "
            f"of norm_num_groups={cfg.norm_num_groups}"
        )
    if not cfg.class_names:
        raise InvalidInputError("diffusion: class_names must not be empty")
    for key in ("p_drop_category", "p_drop_text", "p_drop_taste", "p_drop_all"):
        if not 0.0 <= getattr(cfg, key) <= 1.0:
            raise InvalidInputError(f"diffusion: {key} must be in [0, 1], got {getattr(cfg, key)}")


def make_noise_scheduler(cfg: DiffusionConfig) -> Any:
    """The DDPM training schedule; samplers derive theirs (and the prediction type) from it."""
    from diffusers import DDPMScheduler

    return DDPMScheduler(
        num_train_timesteps=cfg.num_train_timesteps,
        beta_schedule=cfg.beta_schedule,
        prediction_type=cfg.prediction_type,
        clip_sample=True,
    )


@register_model("diffusion")
class DiffusionModel(RegisteredModel):
    """``forward(x (B, C, S, S), t (B,), tokens (B, 3, token_dim)) -> eps (B, C, S, S)``."""

    family = "diffusion"
    config_class = DiffusionConfig

    def __init__(self, cfg: DiffusionConfig) -> None:
        super().__init__(cfg)
        _check(cfg)
        from diffusers import UNet2DConditionModel

        d = cfg.token_dim
        down = ["CrossAttnDownBlock2D" if a else "DownBlock2D" for a in cfg.attention_levels]
        up = ["CrossAttnUpBlock2D" if a else "UpBlock2D" for a in reversed(cfg.attention_levels)]
        self.unet = UNet2DConditionModel(
            sample_size=cfg.image_size,
            in_channels=cfg.in_channels,
            out_channels=cfg.in_channels,
            block_out_channels=tuple(cfg.block_out_channels),
            layers_per_block=cfg.layers_per_block,
            down_block_types=tuple(down),
            up_block_types=tuple(up),
            cross_attention_dim=d,
            attention_head_dim=cfg.attention_heads,  # diffusers' name for the head count
            norm_num_groups=cfg.norm_num_groups,
            class_embed_type="projection" if cfg.global_cond else None,
            projection_class_embeddings_input_dim=d if cfg.global_cond else None,
        )
        self.category_embed = nn.Embedding(len(cfg.class_names), d)
        self.text_proj = nn.Linear(cfg.embed_dim, d)
        self.taste_proj = nn.Linear(cfg.embed_dim, d)
        self.null_tokens = nn.Parameter(0.02 * torch.randn(len(TOKENS), d))  # (3, D)
        self.noise_scheduler = make_noise_scheduler(cfg)
        self.embed_dim = cfg.embed_dim
        self.image_size = cfg.image_size
        self.class_names = tuple(cfg.class_names)

    def tokens(
        self,
        category: torch.Tensor,
        text: torch.Tensor | None = None,
        taste: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Conditioning tokens (B, 3, D) from category (B,) long (-1 = none) and text /
        taste embeddings (B, E) (None or an all-zero row = none)."""
        b = category.shape[0]
        null = self.null_tokens.unsqueeze(0).expand(b, -1, -1)  # (B, 3, D)
        cat = self.category_embed(category.clamp(min=0))  # (B, D)
        have = [category >= 0]
        parts = [cat]
        for emb, proj in ((text, self.text_proj), (taste, self.taste_proj)):
            if emb is None:
                emb = null.new_zeros(b, self.embed_dim)
            emb = emb.to(null.dtype)
            have.append(emb.abs().sum(dim=1) > 0)
            parts.append(proj(emb))
        given = torch.stack(parts, dim=1)  # (B, 3, D)
        mask = torch.stack(have, dim=1).unsqueeze(-1)  # (B, 3, 1)
        return torch.where(mask, given, null)

    def null_like(self, tokens: torch.Tensor) -> torch.Tensor:
        """The all-null (unconditional) tokens, shaped like ``tokens`` (B, 3, D)."""
        return self.null_tokens.unsqueeze(0).expand(tokens.shape[0], -1, -1).to(tokens.dtype)

    def forward(self, x: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Noisy images (B, C, S, S), timesteps (B,), tokens (B, 3, D) -> noise (B, C, S, S)."""
        pooled = tokens.mean(dim=1) if self.cfg.global_cond else None  # (B, D)
        unet: Any = self.unet
        return unet(x, t, encoder_hidden_states=tokens, class_labels=pooled).sample  # type: ignore[no-any-return]

    def _dropped(self, batch: dict[str, Any]) -> tuple[torch.Tensor, ...]:
        """Category (B,), text (B, E), taste (B, E) after condition dropout."""
        cfg = self.cfg
        category = batch["label"].long()
        b, dev = category.shape[0], category.device
        drop_all = torch.rand(b, device=dev) < cfg.p_drop_all  # (B,)
        out = []
        for key, p in (("text_emb", cfg.p_drop_text), ("taste", cfg.p_drop_taste)):
            emb = batch.get(key)
            if emb is None:
                out.append(torch.zeros(b, cfg.embed_dim, device=dev))
                continue
            keep = ~(drop_all | (torch.rand(b, device=dev) < p))  # (B,)
            out.append(emb.float() * keep.unsqueeze(1))
        cat_drop = drop_all | (torch.rand(b, device=dev) < cfg.p_drop_category)
        return torch.where(cat_drop, -1, category), out[0], out[1]

    def training_step(self, batch: dict[str, Any]) -> dict[str, torch.Tensor]:
        """Batch ``image`` (B, C, S, S) in [-1, 1], ``label`` (B,), optional ``text_emb``
        and ``taste`` (B, E): the MSE of the predicted noise (or v) at uniform timesteps."""
        x0 = batch["image"]
        category, text, taste = self._dropped(batch)
        noise = torch.randn_like(x0)
        t = torch.randint(0, self.cfg.num_train_timesteps, (x0.shape[0],), device=x0.device)
        xt = self.noise_scheduler.add_noise(x0, noise, t)  # (B, C, S, S)
        pred = self(xt, t, self.tokens(category, text, taste))
        target = noise
        if self.cfg.prediction_type == "v_prediction":
            target = self.noise_scheduler.get_velocity(x0, noise, t)  # (B, C, S, S)
        return {"loss": F.mse_loss(pred.float(), target.float())}


# ---- training data ----------------------------------------------------------------------


def to_model_pixels(images: torch.Tensor, image_size: int) -> torch.Tensor:
    """uint8 (N, H, W) grayscale -> float (N, 1, S, S) in [-1, 1], zero-padded (black) to S."""
    x = images.float().div(127.5).sub(1.0).unsqueeze(1)  # (N, 1, H, W)
    top, left = (image_size - x.shape[-2]) // 2, (image_size - x.shape[-1]) // 2
    pad = (left, image_size - x.shape[-1] - left, top, image_size - x.shape[-2] - top)
    return F.pad(x, pad, value=-1.0)


class DiffusionDataset(Dataset[dict[str, Any]]):
    """Training items ``{"image" (1, S, S) in [-1, 1], "label", "text_emb" (E,),
    "taste" (E,), "index"}``.

    ``text_emb``: the embedding of a random phrasing of the item's class (from
    ``text_pool`` (P, E) with ``text_class`` (P,)). ``taste``: what a customer who likes
    this kind of item looks like: a random convex mix of the item's own image embedding
    and 1..``mix`` of its ``neighbours`` (same class), plus noise, L2-normalised. Draws
    are seeded by ``(seed, index, epoch)``; call ``set_epoch`` for fresh ones.
    """

    def __init__(
        self,
        images: np.ndarray,
        labels: np.ndarray,
        image_emb: np.ndarray,
        neighbours: np.ndarray,
        text_pool: np.ndarray,
        text_class: np.ndarray,
        *,
        image_size: int = 32,
        mix: int = 4,
        taste_noise: float = 0.2,
        seed: int = 0,
    ) -> None:
        n = len(labels)
        if images.shape[0] != n or image_emb.shape[0] != n or neighbours.shape[0] != n:
            raise InvalidInputError("diffusion data: images, labels, embeddings differ in length")
        self.images = torch.from_numpy(np.array(images, np.uint8))  # (N, H, W), a copy
        self.labels = np.asarray(labels, np.int64)
        self.image_emb = np.asarray(image_emb, np.float32)  # (N, E)
        self.neighbours = np.asarray(neighbours, np.int64)  # (N, K)
        self.pools = [np.flatnonzero(text_class == c) for c in range(int(self.labels.max()) + 1)]
        missing = [c for c in np.unique(self.labels) if len(self.pools[c]) == 0]
        if missing:
            raise InvalidInputError(f"diffusion data: no phrasings for classes {missing}")
        self.text_pool = np.asarray(text_pool, np.float32)  # (P, E)
        self.image_size, self.mix, self.taste_noise = image_size, mix, taste_noise
        self.seed, self.epoch = seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = int(epoch)

    def __len__(self) -> int:
        return len(self.labels)

    def taste(self, i: int, rng: np.random.Generator) -> np.ndarray:
        """(E,) a noised, normalised mix of item ``i`` and some of its neighbours."""
        k = int(rng.integers(1, min(self.mix, self.neighbours.shape[1]) + 1))
        rows = np.concatenate([[i], rng.choice(self.neighbours[i], size=k, replace=False)])
        w = rng.dirichlet(np.ones(len(rows)))  # (k + 1,)
        v = w @ self.image_emb[rows]  # (E,)
        noise = rng.standard_normal(v.shape) / np.sqrt(v.shape[0])
        v = v + self.taste_noise * noise
        return (v / max(float(np.linalg.norm(v)), 1e-12)).astype(np.float32)

    def __getitem__(self, i: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.seed, i, self.epoch])
        label = int(self.labels[i])
        text = self.text_pool[rng.choice(self.pools[label])]
        return {
            "image": to_model_pixels(self.images[i : i + 1], self.image_size)[0],
            "label": label,
            "text_emb": torch.from_numpy(text.copy()),
            "taste": torch.from_numpy(self.taste(i, rng)),
            "index": i,
        }


def same_class_neighbours(emb: np.ndarray, labels: np.ndarray, k: int) -> np.ndarray:
    """(N, k) indices of each row's ``k`` nearest same-class rows by cosine (not itself);
    classes with fewer than ``k + 1`` members repeat their nearest ones."""
    out = np.zeros((len(labels), k), np.int64)
    for c in np.unique(labels):
        rows = np.flatnonzero(labels == c)
        kk = min(k, len(rows) - 1)
        for s in range(0, len(rows), 2048):
            sims = emb[rows[s : s + 2048]] @ emb[rows].T  # (b, n_c)
            sims[np.arange(sims.shape[0]), np.arange(s, s + sims.shape[0])] = -np.inf
            if kk <= 0:
                out[rows[s : s + 2048]] = rows[s : s + 2048, None]
                continue
            top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]  # (b, kk)
            out[rows[s : s + 2048]] = rows[np.resize(top, (top.shape[0], k))]
    return out


DEFAULT_COND_ENCODER = "fashion-mnist-clip@champion"  # the demo's registered CLIP model


def resolve_cond_encoder(spec: str | None) -> str:
    """An encoder spec for the conditioning encoder: a registered ``NAME@ALIAS`` (default:
    the demo's ``fashion-mnist-clip@champion``) becomes ``trained:DIR`` of that version,
    so the saved model names the exact weights; other specs are returned as given."""
    spec = (spec or DEFAULT_COND_ENCODER).strip()
    name, at, alias = spec.partition("@")
    if ":" in spec or not at or alias not in ("champion", "challenger"):
        return spec
    from shoplens.training.tracking import MlflowTracker, parse_model_ref

    name, checked = parse_model_ref(spec)
    try:
        info = MlflowTracker().get_model_version_by_alias(name, checked)
    except NotFoundError as e:
        raise NotFoundError(
            f"conditioning encoder {spec!r}: {e.message}; train the CLIP model first "
            "('shoplens demo --no-serve' registers fashion-mnist-clip) or set "
            "data.cond_encoder=trained:DIR"
        ) from None
    return f"trained:{info.source_dir}"


def class_phrasings(class_names: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Every phrasing of every class (:mod:`shoplens.data.texts`) and its class index."""
    from shoplens.data.texts import ProductTexts

    texts, owner = [], []
    for c, name in enumerate(class_names):
        found = sorted(ProductTexts().all_phrasings(name))
        texts.extend(found)
        owner.extend([c] * len(found))
    return texts, np.asarray(owner, np.int64)


def embed_images_cached(
    images: np.ndarray,
    encoder: Any,
    cache_dir: Path | None,
    say: Callable[[int], None] = lambda _: None,
    batch: int = 1024,
) -> np.ndarray:
    """(N, E) conditioning-encoder embeddings of uint8 (N, H, W) images, cached as .npy
    in ``cache_dir`` under a key of the encoder spec and the image bytes."""
    from PIL import Image

    key = hashlib.sha256(encoder.name.encode() + images.tobytes()).hexdigest()[:16]
    path = cache_dir / f"cond-image-emb-{key}.npy" if cache_dir is not None else None
    if path is not None and path.is_file():
        return np.load(path)
    rows = []
    for s in range(0, len(images), batch):
        chunk = [Image.fromarray(im).convert("RGB") for im in images[s : s + batch]]
        rows.append(encoder.encode_images(chunk))
        say(len(chunk))
    emb = np.concatenate(rows).astype(np.float32)
    if path is not None:
        from shoplens.config import atomic_write

        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_write(path) as f:
            np.save(f, emb)
    return emb


def prepare_diffusion_data(
    images: np.ndarray,
    labels: np.ndarray,
    class_names: Sequence[str],
    encoder: Any,
    *,
    cache_dir: Path | None = None,
    image_size: int = 32,
    neighbours: int = 8,
    seed: int = 0,
) -> DiffusionDataset:
    """A :class:`DiffusionDataset` over uint8 (N, H, W) ``images``: the conditioning
    encoder embeds the images (cached) and each class's pool of phrasings once."""
    from shoplens import progress

    if not {"image", "text"} <= set(getattr(encoder, "modalities", ())):
        raise InvalidInputError(
            f"the conditioning encoder {getattr(encoder, 'name', encoder)!r} must encode "
            "images and texts (a CLIP-style model, e.g. trained:DIR of an fmnist-clip run)"
        )
    with progress.task("embed images (conditioning encoder)", len(images)) as advance:
        emb = embed_images_cached(images, encoder, cache_dir, advance)
    texts, owner = class_phrasings(class_names)
    pool = np.asarray(encoder.encode_texts(texts), np.float32)  # (P, E)
    near = same_class_neighbours(emb, np.asarray(labels), neighbours)
    return DiffusionDataset(
        images, labels, emb, near, pool, owner, image_size=image_size, seed=seed
    )
