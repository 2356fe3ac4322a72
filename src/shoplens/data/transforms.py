"""Image tensors and training augmentations.

Images travel as ``(3, H, W)`` float tensors in ``[0, 1]``; models resize and normalise
them themselves (see :mod:`shoplens.models.common`). Augmentations target the
alterations that retrieval must survive (``shoplens.eval.foundation.alter``: crop,
noise, brightness, blur + JPEG), plus flips and small affine moves. Two equivalent
implementations of one :class:`AugmentConfig`:

* :func:`sample_transform`: a torchvision ``transforms.v2`` pipeline for one uint8
  ``(3, H, W)`` tensor (in ``Dataset.__getitem__``);
* :class:`BatchAugment`: the same families of changes drawn per sample but applied to a
  whole ``(B, 3, H, W)`` batch at once (one ``grid_sample`` for all geometry), several
  times faster on CPU for small images and usable on a GPU; use it in the collate
  function (:class:`shoplens.data.datasets.Collate`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps
from torchvision.transforms import v2
from torchvision.transforms.v2 import functional as TF

from shoplens.errors import InvalidInputError
from shoplens.models.encoders import to_rgb


@dataclass(frozen=True)
class AugmentConfig:
    """Ranges of the random changes; a probability of 0 turns a change off.

    ``crop_scale``: kept area fraction (80-90 % crops are evaluated); ``translate``:
    fraction of the side; ``brightness`` / ``contrast``: factor in ``1 +- value``;
    ``noise_sigma``: max std on 0..1 pixels (0.04 ~ 10 grey levels).
    """

    crop_scale: tuple[float, float] = (0.7, 1.0)
    flip_p: float = 0.5
    degrees: float = 10.0
    translate: float = 0.06
    brightness: float = 0.3
    contrast: float = 0.3
    blur_p: float = 0.2
    blur_sigma: tuple[float, float] = (0.3, 1.2)
    jpeg_p: float = 0.2
    jpeg_quality: tuple[int, int] = (25, 90)
    noise_p: float = 0.3
    noise_sigma: float = 0.04
    whole_pixels: bool = False  # shifts by whole pixels: no resampling blur (needs no zoom/turn)
    erase_p: float = 0.0  # random erasing: a rectangle of the image set to 0 (Zhong et al.)
    erase_scale: tuple[float, float] = (0.02, 0.25)  # its area, as a fraction of the image

    def __post_init__(self) -> None:
        if self.whole_pixels and (self.crop_scale != (1.0, 1.0) or self.degrees != 0):
            raise InvalidInputError(
                "augment.whole_pixels shifts images without resampling; it needs "
                f"crop_scale (1, 1) and degrees 0, got {self.crop_scale} and {self.degrees}"
            )
        lo, hi = self.crop_scale
        if not 0.0 < lo <= hi <= 1.0:
            raise InvalidInputError(
                f"augment.crop_scale must satisfy 0 < lo <= hi <= 1, got {self.crop_scale}"
            )
        if not 0.0 < self.erase_scale[0] <= self.erase_scale[1] <= 1.0:
            raise InvalidInputError(
                f"augment.erase_scale must satisfy 0 < lo <= hi <= 1, got {self.erase_scale}"
            )
        for key in ("flip_p", "blur_p", "jpeg_p", "noise_p", "erase_p"):
            if not 0.0 <= getattr(self, key) <= 1.0:
                raise InvalidInputError(
                    f"augment.{key} must be in [0, 1], got {getattr(self, key)}"
                )
        for key in ("degrees", "translate", "brightness", "contrast", "noise_sigma"):
            if getattr(self, key) < 0:
                raise InvalidInputError(f"augment.{key} must be >= 0, got {getattr(self, key)}")
        if not 0.0 < self.blur_sigma[0] <= self.blur_sigma[1]:
            raise InvalidInputError(
                f"augment.blur_sigma must be 0 < lo <= hi, got {self.blur_sigma}"
            )
        if not 1 <= self.jpeg_quality[0] <= self.jpeg_quality[1] <= 100:
            raise InvalidInputError(
                f"augment.jpeg_quality must be 1 <= lo <= hi <= 100, got {self.jpeg_quality}"
            )


# flips and shifts of up to 2 whole pixels only (pad-and-crop): training images stay as
# sharp as test images (a zoom or sub-pixel shift resamples, i.e. blurs, 28 px images)
_SHIFT = AugmentConfig(
    crop_scale=(1.0, 1.0), degrees=0.0, translate=2 / 28, brightness=0.0, contrast=0.0,
    blur_p=0.0, jpeg_p=0.0, noise_p=0.0, whole_pixels=True,
)  # fmt: skip

AUGMENT_PRESETS: dict[str, AugmentConfig] = {
    # no change at all (evaluation, LiT with cached locked features)
    "none": AugmentConfig(
        crop_scale=(1.0, 1.0), flip_p=0.0, degrees=0.0, translate=0.0, brightness=0.0,
        contrast=0.0, blur_p=0.0, jpeg_p=0.0, noise_p=0.0,
    ),
    # mostly geometric, as in the usual Fashion-MNIST recipes (best clean accuracy)
    "light": AugmentConfig(
        crop_scale=(0.85, 1.0), degrees=0.0, translate=0.06, brightness=0.1, contrast=0.1,
        blur_p=0.05, jpeg_p=0.05, noise_p=0.1,
    ),
    "shift": _SHIFT,
    # "shift" plus random erasing of half the images (occlusion; Zhong et al. 2017)
    "shift-erase": replace(_SHIFT, erase_p=0.5),
    # the defaults: also robust to the evaluated crop / noise / brightness / blur+JPEG
    "robust": AugmentConfig(),
    # copy detection: strong photometric damage, no flips or rotations (copies keep them)
    "copy": AugmentConfig(
        crop_scale=(0.6, 1.0), flip_p=0.0, degrees=0.0, translate=0.04, brightness=0.4,
        contrast=0.2, blur_p=0.5, blur_sigma=(0.4, 1.5), jpeg_p=0.5, jpeg_quality=(20, 60),
        noise_p=0.5, noise_sigma=0.06,
    ),
}  # fmt: skip


def augment_preset(name: str) -> AugmentConfig:
    """A named :data:`AUGMENT_PRESETS` entry (``none``, ``light``, ``shift``,
    ``shift-erase``, ``robust``, ``copy``)."""
    if name not in AUGMENT_PRESETS:
        raise InvalidInputError(
            f"unknown augmentation preset {name!r}; choose one of {', '.join(AUGMENT_PRESETS)}"
        )
    return AUGMENT_PRESETS[name]


def image_to_tensor(img: Image.Image, size: int) -> torch.Tensor:
    """PIL image (any mode) -> uint8 (3, size, size): RGB, short side resized, centre crop.

    The same crop as the EfficientNet-Lite0 encoder (``ImageOps.fit``), used both when
    training on a catalogue and when a trained model encodes query images.
    """
    if size < 1:
        raise InvalidInputError(f"image size must be >= 1, got {size}")
    fitted = ImageOps.fit(to_rgb(img), (size, size), Image.Resampling.BICUBIC)
    return torch.from_numpy(np.asarray(fitted, np.uint8).copy()).permute(2, 0, 1)  # (3, S, S)


def to_float(x: torch.Tensor) -> torch.Tensor:
    """uint8 images -> float32 in [0, 1] (float input is returned as float32)."""
    return x.float() / 255.0 if x.dtype == torch.uint8 else x.float()


def sample_transform(cfg: AugmentConfig, image_size: int) -> v2.Compose:
    """Per-sample pipeline: uint8 (3, H, W) -> float (3, image_size, image_size) in [0, 1]."""
    t = cfg.translate
    return v2.Compose(
        [
            v2.RandomResizedCrop(image_size, scale=cfg.crop_scale, ratio=(0.9, 1.1)),
            v2.RandomHorizontalFlip(cfg.flip_p),
            v2.RandomAffine(degrees=cfg.degrees, translate=(t, t)),
            v2.ColorJitter(brightness=cfg.brightness, contrast=cfg.contrast),
            v2.RandomApply([v2.GaussianBlur(5, sigma=cfg.blur_sigma)], p=cfg.blur_p),
            v2.RandomApply([v2.JPEG(cfg.jpeg_quality)], p=cfg.jpeg_p),
            v2.ToDtype(torch.float32, scale=True),
            v2.RandomApply([v2.GaussianNoise(sigma=cfg.noise_sigma)], p=cfg.noise_p),
        ]
    )


def _uniform(n: int, lo: float, hi: float, gen: torch.Generator | None) -> torch.Tensor:
    return lo + (hi - lo) * torch.rand(n, generator=gen)  # (n,)


class BatchAugment:
    """Per-sample random augmentation of a float batch (B, 3, H, W) in [0, 1].

    Geometry (crop/zoom, flip, rotation, translation) is one affine ``grid_sample``;
    brightness/contrast are per-sample factors; blur, JPEG and noise hit a random subset
    (blur sigma and JPEG quality drawn once per batch). ``seed`` makes it reproducible.
    """

    def __init__(self, cfg: AugmentConfig | None = None, seed: int | None = None) -> None:
        self.cfg = cfg or AugmentConfig()
        self.gen = torch.Generator().manual_seed(seed) if seed is not None else None

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 4 or x.shape[1] != 3 or not x.is_floating_point():
            raise InvalidInputError(
                f"BatchAugment expects float images (B, 3, H, W), got {x.dtype} {tuple(x.shape)}"
            )
        x = self._geometry(x)
        x = self._photometric(x)
        x = self._blur(x)
        x = self._jpeg(x)
        x = self._noise(x).clamp(0.0, 1.0)
        return self._erase(x)

    def _pick(self, p: float, n: int) -> torch.Tensor:
        return torch.nonzero(torch.rand(n, generator=self.gen) < p).flatten()  # (k,)

    def _geometry(self, x: torch.Tensor) -> torch.Tensor:
        c, b = self.cfg, x.shape[0]
        zoom = _uniform(b, *c.crop_scale, self.gen).sqrt()  # (B,) kept side fraction
        angle = _uniform(b, -c.degrees, c.degrees, self.gen) * (math.pi / 180.0)
        flip = torch.where(torch.rand(b, generator=self.gen) < c.flip_p, -1.0, 1.0)
        room = 1.0 - zoom  # crop centre range keeping the crop inside the image
        shift = [_uniform(b, -1, 1, self.gen) * room + _uniform(b, -2, 2, self.gen) * c.translate
                 for _ in range(2)]  # fmt: skip
        if c.whole_pixels:  # 2 / side = one pixel in normalised coordinates
            sides = (x.shape[3], x.shape[2])  # x: width, y: height
            shift = [(s * n / 2).round() * 2 / n for s, n in zip(shift, sides, strict=True)]
        cos, sin = angle.cos() * zoom, angle.sin() * zoom
        theta = torch.stack(
            [
                torch.stack([cos * flip, -sin, shift[0]], 1),
                torch.stack([sin * flip, cos, shift[1]], 1),
            ],
            dim=1,
        ).to(x)  # (B, 2, 3): output -> input coordinates
        grid = F.affine_grid(theta, list(x.shape), align_corners=False)  # (B, H, W, 2)
        return F.grid_sample(x, grid, mode="bilinear", padding_mode="border", align_corners=False)

    def _photometric(self, x: torch.Tensor) -> torch.Tensor:
        c, b = self.cfg, x.shape[0]
        bright = _uniform(b, 1 - c.brightness, 1 + c.brightness, self.gen).to(x).view(b, 1, 1, 1)
        contrast = _uniform(b, 1 - c.contrast, 1 + c.contrast, self.gen).to(x).view(b, 1, 1, 1)
        x = (x * bright).clamp(0.0, 1.0)
        mean = TF.rgb_to_grayscale(x).mean(dim=(1, 2, 3), keepdim=True)  # (B, 1, 1, 1)
        return ((x - mean) * contrast + mean).clamp(0.0, 1.0)

    def _blur(self, x: torch.Tensor) -> torch.Tensor:
        idx = self._pick(self.cfg.blur_p, x.shape[0])
        if not len(idx):
            return x
        sigma = float(_uniform(1, *self.cfg.blur_sigma, self.gen))
        k = 2 * math.ceil(3 * sigma) + 1
        x = x.clone()
        x[idx] = TF.gaussian_blur(x[idx], kernel_size=[k, k], sigma=[sigma, sigma])
        return x

    def _jpeg(self, x: torch.Tensor) -> torch.Tensor:
        idx = self._pick(self.cfg.jpeg_p, x.shape[0])
        if not len(idx):
            return x
        lo, hi = self.cfg.jpeg_quality
        quality = int(torch.randint(lo, hi + 1, (1,), generator=self.gen))
        as_u8 = (x[idx] * 255.0).round().clamp(0, 255).to(torch.uint8).cpu()
        x = x.clone()
        x[idx] = to_float(TF.jpeg(as_u8, quality)).to(x)
        return x

    def _erase(self, x: torch.Tensor) -> torch.Tensor:
        """Set one random rectangle (area ``erase_scale``, aspect 0.3-3.3) to 0 in a
        random ``erase_p`` share of the images."""
        idx = self._pick(self.cfg.erase_p, x.shape[0])
        if not len(idx):
            return x
        k, (h, w) = len(idx), x.shape[2:]
        area = _uniform(k, *self.cfg.erase_scale, self.gen) * h * w  # (k,) pixels
        aspect = torch.exp(_uniform(k, math.log(0.3), math.log(1 / 0.3), self.gen))
        eh = (area * aspect).sqrt().round().clamp(1, h)  # (k,)
        ew = (area / aspect).sqrt().round().clamp(1, w)
        y0 = (torch.rand(k, generator=self.gen) * (h - eh + 1)).floor()  # (k,)
        x0 = (torch.rand(k, generator=self.gen) * (w - ew + 1)).floor()
        rows = torch.arange(h)[None, :]  # (1, H)
        cols = torch.arange(w)[None, :]  # (1, W)
        in_r = (rows >= y0[:, None]) & (rows < (y0 + eh)[:, None])  # (k, H)
        in_c = (cols >= x0[:, None]) & (cols < (x0 + ew)[:, None])  # (k, W)
        keep = ~(in_r[:, :, None] & in_c[:, None, :])  # (k, H, W)
        x = x.clone()
        x[idx] = x[idx] * keep[:, None].to(x)
        return x

    def _noise(self, x: torch.Tensor) -> torch.Tensor:
        idx = self._pick(self.cfg.noise_p, x.shape[0])
        if not len(idx):
            return x
        sigma = _uniform(len(idx), 0.0, self.cfg.noise_sigma, self.gen).to(x).view(-1, 1, 1, 1)
        noise = torch.randn(x[idx].shape, generator=self.gen).to(x) * sigma
        x = x.clone()
        x[idx] = x[idx] + noise
        return x
