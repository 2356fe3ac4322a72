"""Sample product images from a trained :class:`~shoplens.models.diffusion.DiffusionModel`.

Inference only (no loss, no training imports): :class:`Generator` turns a prompt, a
category and / or a customer taste vector into conditioning tokens, runs a diffusers
sampler (``ddim``, ``dpm`` = DPM-Solver++ multistep, or ``ddpm``) with classifier-free
guidance, ``eps = eps_null + g * (eps_cond - eps_null)``, both halves in one batched UNet
call, and returns :class:`GeneratedImage` objects with provenance::

    gen = Generator.load("fm-diffusion@champion")
    images = gen.generate(n=16, prompt="ankle boot", guidance=3.0, steps=25, seed=0)
    open("boot.png", "wb").write(images[0].png_bytes())

Image ``i`` of a call uses seed ``seed + i`` (its own noise generator), so it can be
reproduced alone. ``init_image`` + ``strength`` is SDEdit image-to-image (the init image
is noised to the timestep ``strength`` selects and denoised from there); adding ``mask``
(white = regenerate) inpaints: the known region is replaced by the noised init at every
step, and at the end the original pixels outside the mask are copied back, so they are
bit-identical to the input.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Literal, get_args

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from PIL.PngImagePlugin import PngInfo

from shoplens.errors import ImageError, InvalidInputError, NotFoundError
from shoplens.generate import PROVENANCE_KEY

Scheduler = Literal["ddim", "dpm", "ddpm"]
LIMITS: dict[str, tuple[float, float]] = {
    "n": (1, 64),
    "steps": (1, 200),
    "guidance": (0.0, 20.0),
    "strength": (0.0, 1.0),
}
MAX_PROMPT_CHARS = 500
MIN_UNET_BATCH = 8  # rows per UNet call at least (see Generator.unet_call)
DEFAULT_MODEL = "fm-diffusion@champion"  # registered by the fmnist-diffusion recipe
TRAIN_HINT = "train one with 'shoplens train --config fmnist-diffusion'"


@dataclass
class GeneratedImage:
    """One generated image with its provenance (``info``: model, seed, prompt, ...)."""

    image: Image.Image  # RGB; the catalogue size (28x28), or the init image's size
    seed: int
    info: dict[str, str]

    def png_bytes(self) -> bytes:
        """PNG with every ``info`` entry and ``shoplens:generated=true`` as text chunks."""
        meta = PngInfo()
        for key, value in self.info.items():
            meta.add_text(key, value)
        meta.add_text(PROVENANCE_KEY, "true")
        buf = io.BytesIO()
        self.image.save(buf, format="PNG", pnginfo=meta)
        return buf.getvalue()


def _check_range(key: str, value: Any, integer: bool = False) -> None:
    lo, hi = LIMITS[key]
    ok_type = isinstance(value, int) if integer else isinstance(value, (int, float))
    if isinstance(value, bool) or not ok_type or not (lo <= value <= hi):
        kind = "an integer" if integer else "a number"
        raise InvalidInputError(f"{key} must be {kind} in [{lo:g}, {hi:g}], got {value!r}")


def _decode(image: Image.Image | bytes, what: str) -> Image.Image:
    """A fully loaded PIL image (bytes are decoded under the ingest safety limits)."""
    if isinstance(image, (bytes, bytearray)):
        from shoplens.data.images import decode_image

        return decode_image(bytes(image), source=what)
    if not isinstance(image, Image.Image):
        raise InvalidInputError(f"{what} must be an image, got {type(image).__name__}")
    try:
        image.load()
        return image
    except (OSError, ValueError) as e:
        raise ImageError(f"{what} cannot be decoded ({e})") from None


class Generator:
    """A loaded diffusion model and its conditioning encoder, ready to sample.

    Attributes: ``categories`` (the class names it knows), ``image_size`` (the size of the
    images it returns), ``name`` (recorded as ``model`` in provenance) and
    ``cond_encoder`` (the encoder spec of prompts and taste vectors).
    """

    def __init__(self, model: Any, name: str) -> None:
        if getattr(model, "family", "") != "diffusion":
            raise InvalidInputError(
                f"model {getattr(model, 'model_name', '?')!r} is not a diffusion model "
                f"(family {getattr(model, 'family', '?')!r})"
            )
        self.model = model.eval()
        self.name = name
        self.categories: list[str] = list(model.class_names)
        self.image_size = int(model.cfg.crop_size)
        self.cond_encoder: str = model.cfg.cond_encoder
        self._pad = (int(model.cfg.image_size) - self.image_size) // 2
        self.folder: Path | None = None  # the saved model's folder (set by ``load``)

    @classmethod
    def load(cls, spec: str) -> Generator:
        """From a model or run folder, ``trained:DIR``, or a registered ``NAME[@ALIAS]``."""
        from shoplens.models.io import MODEL_JSON, load_model

        spec = str(spec).strip()
        if not spec:
            raise InvalidInputError("empty model spec; " + TRAIN_HINT)
        folder = Path(spec.removeprefix("trained:")).expanduser()
        name = spec
        if not folder.is_dir():
            if spec.startswith("trained:") or "/" in spec:
                raise NotFoundError(f"model folder not found: {folder}; {TRAIN_HINT}")
            folder, name = _registered(spec)
        if not (folder / MODEL_JSON).is_file() and (folder / "model" / MODEL_JSON).is_file():
            folder = folder / "model"  # a run folder
        if not (folder / MODEL_JSON).is_file():
            raise NotFoundError(f"no saved model in {folder}; {TRAIN_HINT}")
        generator = cls(load_model(folder), name)
        generator.folder = folder
        return generator

    # ---- conditioning ------------------------------------------------------------------

    def text_embedding(self, prompts: list[str]) -> np.ndarray:
        """(N, E) conditioning-encoder embeddings of ``prompts``, L2-normalised."""
        from shoplens.registry import get_encoder

        return np.asarray(get_encoder(self.cond_encoder).encode_texts(list(prompts)), np.float32)

    def conditioning(
        self,
        prompt: str | None = None,
        category: str | None = None,
        taste: np.ndarray | None = None,
    ) -> torch.Tensor:
        """The conditioning tokens (1, 3, D) of a request (null tokens where absent)."""
        dim = self.model.embed_dim
        cat = torch.tensor([self.categories.index(category) if category is not None else -1])
        text = torch.from_numpy(self.text_embedding([prompt])) if prompt is not None else None
        taste_t = None
        if taste is not None:
            v = np.asarray(taste, np.float32).reshape(-1)
            taste_t = torch.from_numpy(v / float(np.linalg.norm(v))).reshape(1, dim)
        with torch.no_grad():
            return self.model.tokens(cat, text, taste_t)  # type: ignore[no-any-return]

    def unet_call(self, x: torch.Tensor, t: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """One model evaluation: noisy (B, C, S, S), timestep, tokens (B, 3, D) -> eps.

        Batches under :data:`MIN_UNET_BATCH` rows are padded (and the padding dropped):
        CPU kernels round tiny batches differently, and with the padding every row's
        result is the same whatever else is in the batch, so image ``i`` of ``n`` is
        bit-identical to the same seed generated alone.
        """
        b = x.shape[0]
        if b < MIN_UNET_BATCH:
            pad = MIN_UNET_BATCH - b
            x = torch.cat([x, x[:1].expand(pad, -1, -1, -1)])
            tokens = torch.cat([tokens, tokens[:1].expand(pad, -1, -1)])
        return self.model(x, t, tokens)[:b]  # type: ignore[no-any-return]

    def make_scheduler(self, scheduler: str) -> Any:
        """A fresh sampler of kind ``scheduler`` over the model's training schedule."""
        from diffusers import DDIMScheduler, DDPMScheduler, DPMSolverMultistepScheduler

        kinds = {"ddim": DDIMScheduler, "dpm": DPMSolverMultistepScheduler, "ddpm": DDPMScheduler}
        if scheduler not in kinds:
            choices = ", ".join(repr(k) for k in get_args(Scheduler))
            raise InvalidInputError(f"scheduler must be one of {choices}, got {scheduler!r}")
        config = dict(self.model.noise_scheduler.config)
        return kinds[scheduler].from_config(config, timestep_spacing="trailing")

    # ---- sampling ----------------------------------------------------------------------

    def _validate(self, **kw: Any) -> None:
        _check_range("n", kw["n"], integer=True)
        _check_range("steps", kw["steps"], integer=True)
        _check_range("guidance", kw["guidance"])
        _check_range("strength", kw["strength"])
        prompt = kw["prompt"]
        if prompt is not None and (not isinstance(prompt, str) or not prompt.strip()):
            raise InvalidInputError("prompt must not be empty (leave it out for no prompt)")
        if prompt is not None and len(prompt) > MAX_PROMPT_CHARS:
            raise InvalidInputError(f"prompt is longer than {MAX_PROMPT_CHARS} characters")
        category = kw["category"]
        if category is not None and category not in self.categories:
            raise InvalidInputError(
                f"unknown category {category!r}; known: {', '.join(self.categories)}"
            )
        taste = kw["taste"]
        if taste is not None:
            v = np.asarray(taste, dtype=np.float64)
            if v.shape != (self.model.embed_dim,) or not np.isfinite(v).all() or not v.any():
                raise InvalidInputError(
                    f"taste must be a finite, non-zero vector of {self.model.embed_dim} numbers "
                    f"(the conditioning encoder's image space), got shape {v.shape}"
                )
        if kw["mask"] is not None and kw["init_image"] is None:
            raise InvalidInputError("a mask needs an init image (the image to inpaint)")
        self.make_scheduler(kw["scheduler"])

    def generate(
        self,
        *,
        n: int = 1,
        prompt: str | None = None,
        category: str | None = None,
        taste: np.ndarray | None = None,
        customer: str | None = None,
        guidance: float = 3.0,
        steps: int = 50,
        seed: int = 0,
        scheduler: str = "ddpm",
        init_image: Image.Image | bytes | None = None,
        strength: float = 0.6,
        mask: Image.Image | np.ndarray | None = None,
        batch_size: int = 64,
    ) -> list[GeneratedImage]:
        """``n`` images (image ``i`` from seed ``seed + i``); see the module docstring.

        Raises:
            InvalidInputError: a value out of :data:`LIMITS`, an empty prompt, an unknown
                category or scheduler, a bad taste vector, a mask without an init image or
                of another size than it; ImageError: an init image that cannot be decoded.
        """
        self._validate(
            n=n, prompt=prompt, category=category, taste=taste, guidance=guidance, steps=steps,
            scheduler=scheduler, init_image=init_image, strength=strength, mask=mask,
        )  # fmt: skip
        if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
            raise InvalidInputError(f"batch_size must be a positive integer, got {batch_size!r}")
        init = _decode(init_image, "init image") if init_image is not None else None
        known = _mask_array(mask, init.size) if mask is not None and init is not None else None
        tokens = self.conditioning(prompt, category, taste)  # (1, 3, D)
        mode = "txt2img" if init is None else "img2img" if known is None else "inpaint"
        info = {
            "model": self.name,
            "prompt": prompt or "",
            "category": category or "",
            "customer": customer or "",
            "guidance": f"{guidance:g}",
            "steps": str(steps),
            "scheduler": scheduler,
            "strength": f"{strength:g}" if init is not None else "",
            "mode": mode,
            "cond_encoder": self.cond_encoder,
            "generator": "shoplens",
            "created": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        }
        x0 = self._init_tensor(init) if init is not None else None
        m = self._model_mask(known) if known is not None else None
        out: list[GeneratedImage] = []
        for start in range(0, n, batch_size):
            seeds = list(range(seed + start, seed + min(n, start + batch_size)))
            x = self._sample(seeds, tokens, guidance, steps, scheduler, x0, strength, m)
            for s, img in zip(seeds, self._to_images(x, init, known), strict=True):
                out.append(GeneratedImage(img, s, {**info, "seed": str(s)}))
        return out

    def _sample(
        self,
        seeds: list[int],
        tokens: torch.Tensor,
        guidance: float,
        steps: int,
        scheduler: str,
        x0: torch.Tensor | None,
        strength: float,
        mask: torch.Tensor | None,
    ) -> torch.Tensor:
        """Denoise one batch; returns (B, C, S, S) in [-1, 1]."""
        cfg, b = self.model.cfg, len(seeds)
        shape = (1, cfg.in_channels, cfg.image_size, cfg.image_size)
        gens = [torch.Generator().manual_seed(s) for s in seeds]
        noise = torch.cat([torch.randn(shape, generator=g) for g in gens])  # (B, C, S, S)
        sched = self.make_scheduler(scheduler)
        sched.set_timesteps(steps)
        timesteps = sched.timesteps
        train = self.model.noise_scheduler  # x_t = sqrt(a_t) x0 + sqrt(1 - a_t) eps, all kinds
        if x0 is None:
            x = noise * sched.init_noise_sigma
        else:
            x0 = x0.expand(b, -1, -1, -1)
            timesteps = timesteps[(steps - min(int(steps * strength), steps)) * sched.order :]
            x = train.add_noise(x0, noise, timesteps[:1].repeat(b)) if len(timesteps) else x0
        null = self.model.null_like(tokens)
        uncond = bool(torch.equal(tokens, null))
        if uncond or guidance == 1.0:
            cond = tokens.expand(b, -1, -1)
        elif guidance == 0.0:
            cond = null.expand(b, -1, -1)
        else:
            cond = torch.cat([tokens.expand(b, -1, -1), null.expand(b, -1, -1)])  # (2B, 3, D)
        with torch.inference_mode():
            for i, t in enumerate(timesteps):
                inp = sched.scale_model_input(x, t)
                if cond.shape[0] == b:
                    eps = self.unet_call(inp, t, cond)
                else:
                    e_cond, e_null = self.unet_call(torch.cat([inp, inp]), t, cond).chunk(2)
                    eps = e_null + guidance * (e_cond - e_null)
                x = sched.step(eps, t, x, generator=gens).prev_sample
                if mask is not None and x0 is not None:  # keep the known region
                    last = i + 1 == len(timesteps)
                    known = x0 if last else train.add_noise(x0, noise, timesteps[i + 1 : i + 2])
                    x = mask * x + (1 - mask) * known
        return x.clamp(-1.0, 1.0)

    # ---- image conversions -------------------------------------------------------------

    def _init_tensor(self, init: Image.Image) -> torch.Tensor:
        """Init image -> (1, 1, S, S) grayscale in [-1, 1], resized to the catalogue size
        and padded like the training images."""
        size = (self.image_size, self.image_size)
        gray = init.convert("L")
        if gray.size != size:
            gray = gray.resize(size, Image.Resampling.BICUBIC)
        x = torch.from_numpy(np.asarray(gray, np.float32).copy()) / 127.5 - 1.0  # (s, s)
        return F.pad(x[None, None], (self._pad,) * 4, value=-1.0)

    def _model_mask(self, known: np.ndarray) -> torch.Tensor:
        """(1, 1, S, S) float: 1 where any part of a model pixel is to be regenerated."""
        size = (self.image_size, self.image_size)
        small = Image.fromarray(known.astype(np.uint8) * 255).resize(size, Image.Resampling.BOX)
        m = torch.from_numpy((np.asarray(small) > 0).astype(np.float32))  # (s, s)
        return F.pad(m[None, None], (self._pad,) * 4, value=0.0)

    def _to_images(
        self, x: torch.Tensor, init: Image.Image | None, known: np.ndarray | None
    ) -> list[Image.Image]:
        """(B, C, S, S) in [-1, 1] -> RGB images: padding cropped; at the init image's size
        when there is one, its pixels outside the mask copied back unchanged."""
        p, s = self._pad, self.image_size
        crop = x[:, 0, p : p + s, p : p + s]  # (B, s, s)
        pixels = ((crop + 1.0) * 127.5).round().clamp(0, 255).to(torch.uint8).numpy()
        images = []
        for arr in pixels:
            img = Image.fromarray(arr).convert("RGB")
            if init is not None and img.size != init.size:
                img = img.resize(init.size, Image.Resampling.BICUBIC)
            if known is not None and init is not None:
                original = np.asarray(init.convert("RGB"))
                img = Image.fromarray(np.where(known[..., None], np.asarray(img), original))
            images.append(img)
        return images


def _mask_array(mask: Image.Image | np.ndarray, size: tuple[int, int]) -> np.ndarray:
    """(H, W) bool, True = regenerate (white / > 127 / True), checked against ``size``."""
    if isinstance(mask, Image.Image):
        arr = np.asarray(_decode(mask, "mask").convert("L")) > 127
    elif isinstance(mask, np.ndarray):
        arr = mask.astype(bool) if mask.dtype == bool else np.asarray(mask) > 127
        if arr.ndim == 3:
            arr = np.asarray(arr.any(axis=2))
    else:
        raise InvalidInputError(f"mask must be an image or an array, got {type(mask).__name__}")
    if arr.ndim != 2 or (arr.shape[1], arr.shape[0]) != tuple(size):
        got = f"{arr.shape[1]}x{arr.shape[0]}" if arr.ndim >= 2 else str(arr.shape)
        raise InvalidInputError(
            f"mask is {got} but the init image is {size[0]}x{size[1]}: they must be the same size"
        )
    return arr


def _registered(ref: str) -> tuple[Path, str]:
    """The folder of registered model ``NAME[@ALIAS]`` and a name for provenance."""
    from shoplens.training.tracking import MlflowTracker, parse_model_ref

    name, alias = parse_model_ref(ref)
    try:
        info = MlflowTracker().get_model_version_by_alias(name, alias)
    except NotFoundError as e:
        raise NotFoundError(f"{e.message}; {TRAIN_HINT}") from None
    return Path(info.source_dir), f"{name}@{alias} v{info.version}"


def make_grid(
    images: Sequence[Image.Image], cols: int | None = None, scale: int = 2
) -> Image.Image:
    """Images in a grid (``cols`` per row, default about square), each scaled ``scale``x
    with nearest-neighbour pixels, 2 px white gaps. RGB."""
    if not images:
        raise InvalidInputError("make_grid needs at least one image")
    if scale < 1:
        raise InvalidInputError(f"scale must be >= 1, got {scale}")
    cols = max(1, min(cols or math.ceil(math.sqrt(len(images))), len(images)))
    rows = math.ceil(len(images) / cols)
    w = max(im.width for im in images) * scale
    h = max(im.height for im in images) * scale
    gap = 2
    grid = Image.new("RGB", (cols * (w + gap) + gap, rows * (h + gap) + gap), "white")
    for i, im in enumerate(images):
        cell = im.convert("RGB").resize(
            (im.width * scale, im.height * scale), Image.Resampling.NEAREST
        )
        grid.paste(cell, (gap + (i % cols) * (w + gap), gap + (i // cols) * (h + gap)))
    return grid


__all__ = ["LIMITS", "GeneratedImage", "Generator", "Scheduler", "make_grid"]
