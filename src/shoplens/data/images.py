"""Safe image loading and storage normalisation.

Every user image goes through :func:`decode_image`: size limit, format allow-list,
pixel limit checked from the header before any pixel is decoded, a full decode (so
truncated files fail here), EXIF orientation, first frame of animations, RGB with
alpha flattened onto white. :func:`encode_for_store` then re-encodes it (which strips
metadata and any payload hidden after the image data) for content-addressed storage.
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageOps, UnidentifiedImageError

from shoplens.data.urls import check_url, fetch_many, fetch_url, url_scheme
from shoplens.errors import ImageError, InvalidInputError, NotFoundError, PayloadTooLargeError

__all__ = [
    "ALLOWED_FORMATS",
    "MAX_IMAGE_BYTES",
    "MAX_IMAGE_PIXELS",
    "StoredImage",
    "decode_image",
    "encode_for_store",
    "fetch_many",
    "fetch_url",
    "image_to_png_bytes",
    "load_image_ref",
    "read_image_file",
    "resolve_local_path",
]

MAX_IMAGE_BYTES = 20 * 1024 * 1024
MAX_IMAGE_PIXELS = 40_000_000
ALLOWED_FORMATS = frozenset({"JPEG", "PNG", "WEBP", "GIF", "BMP", "TIFF"})
#: Formats Pillow reports under another name for a variant of an allowed one.
_FORMAT_ALIASES = {"MPO": "JPEG"}  # multi-picture JPEG written by many phone cameras
PNG_MAX_PIXELS = 256 * 256
JPEG_QUALITY = 92


@dataclass(frozen=True)
class StoredImage:
    """A normalised image ready for content-addressed storage."""

    data: bytes
    sha256: str
    ext: str
    width: int
    height: int


def decode_image(
    data: bytes,
    *,
    source: str = "image",
    max_bytes: int = MAX_IMAGE_BYTES,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> Image.Image:
    """Decode untrusted image bytes into a fully loaded RGB image.

    Args:
        data: the encoded file.
        source: what to call the image in error messages (a path, URL or name).
        max_bytes: largest encoded size accepted.
        max_pixels: largest width*height accepted (checked before decoding).

    Raises:
        PayloadTooLargeError: ``data`` is over ``max_bytes``.
        ImageError: not an image, a format outside the allow-list, too many pixels,
            truncated or corrupt.
    """
    if len(data) > max_bytes:
        raise PayloadTooLargeError(
            f"{source}: image is {_mib(len(data))}, over the limit of {_mib(max_bytes)}"
        )
    if not data:
        raise ImageError(f"{source}: not an image (the file is empty)")
    try:
        img = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError(f"{source}: not an image (unrecognised file format)") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError(f"{source}: image has too many pixels ({exc})") from None
    except Exception as exc:
        raise ImageError(f"{source}: truncated or corrupt image header ({exc})") from None
    try:
        fmt = _FORMAT_ALIASES.get(img.format or "", img.format or "unknown")
        if fmt not in ALLOWED_FORMATS:
            raise ImageError(
                f"{source}: unsupported image format {fmt} "
                f"(allowed: {', '.join(sorted(ALLOWED_FORMATS))})"
            )
        width, height = img.size
        if width <= 0 or height <= 0:
            raise ImageError(f"{source}: image has no pixels ({width}x{height})")
        if width * height > max_pixels:
            raise ImageError(
                f"{source}: image is {width}x{height} = {width * height:,} pixels, "
                f"over the limit of {max_pixels:,}"
            )
        try:
            img.load()  # first frame only; truncated data raises here
        except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
            raise ImageError(f"{source}: image has too many pixels ({exc})") from None
        except Exception as exc:
            raise ImageError(f"{source}: truncated or corrupt image data ({exc})") from None
        return _to_rgb(_apply_orientation(img), source)
    finally:
        img.close()


def _apply_orientation(img: Image.Image) -> Image.Image:
    """Rotate/flip by the EXIF Orientation tag; a broken EXIF block is ignored."""
    try:
        out = ImageOps.exif_transpose(img)
    except Exception:
        return img.copy()
    return out if out is not None else img.copy()


def _to_rgb(img: Image.Image, source: str) -> Image.Image:
    """Convert any mode to RGB, flattening transparency onto white."""
    try:
        mode = img.mode
        if mode == "RGB":
            return img
        if mode in ("I", "F") or mode.startswith("I;16"):
            arr = np.asarray(img, dtype=np.float64)
            if arr.size and arr.max() > 255:
                arr = arr / 257.0  # 16-bit samples
            gray = np.clip(np.rint(arr), 0, 255).astype(np.uint8)
            return Image.fromarray(gray).convert("RGB")
        has_alpha = mode in ("RGBA", "LA", "PA", "RGBa", "La") or (
            mode == "P" and "transparency" in img.info
        )
        if mode == "L" and "transparency" in img.info:
            has_alpha = True
        if not has_alpha:
            return img.convert("RGB")
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    except Exception as exc:
        raise ImageError(f"{source}: unsupported colour mode {img.mode} ({exc})") from None


def resolve_local_path(
    path: str | Path, *, root: Path | None = None, allow_outside_root: bool = False
) -> Path:
    """Return the absolute, symlink-resolved path of a local image.

    Relative paths are taken relative to ``root`` (or the working folder).

    Raises:
        InvalidInputError: the path leads outside ``root`` (after resolving symlinks).
    """
    if "\0" in str(path):
        raise InvalidInputError(f"image path {str(path)!r} contains a NUL byte")
    p = Path(path).expanduser()
    if root is not None and not p.is_absolute():
        p = root / p
    resolved = Path(os.path.realpath(p))
    if root is not None and not allow_outside_root:
        real_root = Path(os.path.realpath(root))
        if not resolved.is_relative_to(real_root):
            raise InvalidInputError(
                f"image path {str(path)!r} escapes the manifest folder {str(root)!r} "
                "(paths must stay inside it; allow outside paths explicitly if intended)"
            )
    return resolved


def read_image_file(
    path: str | Path,
    *,
    root: Path | None = None,
    allow_outside_root: bool = False,
    max_bytes: int = MAX_IMAGE_BYTES,
    max_pixels: int = MAX_IMAGE_PIXELS,
) -> Image.Image:
    """Read and decode a local image file.

    Args:
        path: the file; relative paths are relative to ``root`` when given.
        root: folder the file must stay inside (symlinks resolved).
        allow_outside_root: skip the ``root`` containment check.
        max_bytes: largest file size accepted (checked with ``stat`` first).
        max_pixels: largest width*height accepted.

    Raises:
        NotFoundError: no such file.
        InvalidInputError: a directory / not a regular file, or escaping ``root``.
        PayloadTooLargeError: the file is over ``max_bytes``.
        ImageError: the file is not a usable image.
    """
    resolved = resolve_local_path(path, root=root, allow_outside_root=allow_outside_root)
    try:
        st = resolved.stat()
    except FileNotFoundError:
        raise NotFoundError(f"image file not found: {str(path)!r}") from None
    except OSError as exc:
        raise InvalidInputError(f"cannot read image file {str(path)!r}: {exc.strerror}") from None
    if stat.S_ISDIR(st.st_mode):
        raise InvalidInputError(f"image path {str(path)!r} is a directory, not an image file")
    if not stat.S_ISREG(st.st_mode):
        raise InvalidInputError(f"image path {str(path)!r} is not a regular file")
    if st.st_size > max_bytes:
        raise PayloadTooLargeError(
            f"{path}: image file is {_mib(st.st_size)}, over the limit of {_mib(max_bytes)}"
        )
    try:
        with open(resolved, "rb") as fh:
            data = fh.read(max_bytes + 1)  # bounded even if the file grows meanwhile
    except OSError as exc:
        raise InvalidInputError(f"cannot read image file {str(path)!r}: {exc.strerror}") from None
    return decode_image(data, source=str(path), max_bytes=max_bytes, max_pixels=max_pixels)


def load_image_ref(
    ref: str,
    *,
    root: Path | None,
    allow_outside_root: bool = False,
    max_bytes: int = MAX_IMAGE_BYTES,
    max_pixels: int = MAX_IMAGE_PIXELS,
    timeout: float = 10.0,
    retries: int = 2,
    allow_private: bool | None = None,
) -> Image.Image:
    """Load a manifest image reference: an http(s) URL or a local path.

    Local paths are relative to ``root``; URLs are fetched with :func:`fetch_url`.

    Raises:
        ShoplensError: as :func:`read_image_file`, :func:`fetch_url` and
            :func:`decode_image` (other URL schemes give InvalidInputError).
    """
    if url_scheme(ref) is not None:
        check_url(ref)
        data = fetch_url(
            ref, timeout=timeout, retries=retries, max_bytes=max_bytes, allow_private=allow_private
        )
        return decode_image(data, source=ref, max_bytes=max_bytes, max_pixels=max_pixels)
    return read_image_file(
        ref,
        root=root,
        allow_outside_root=allow_outside_root,
        max_bytes=max_bytes,
        max_pixels=max_pixels,
    )


def encode_for_store(img: Image.Image, *, max_side: int = 1024) -> StoredImage:
    """Downscale and re-encode an RGB image for storage.

    The longest side is capped at ``max_side`` (LANCZOS, aspect kept). Images of at
    most 256*256 pixels are stored as PNG, larger ones as JPEG quality 92. Only pixels
    are written (no metadata), and the same image always gives the same bytes.
    """
    if max_side < 1:
        raise InvalidInputError(f"max_side must be at least 1, got {max_side}")
    clean = img if img.mode == "RGB" else _to_rgb(img, "image")
    width, height = clean.size
    if max(width, height) > max_side:
        scale = max_side / max(width, height)
        size = (max(1, round(width * scale)), max(1, round(height * scale)))
        clean = clean.resize(size, Image.Resampling.LANCZOS)
    # A fresh image from raw pixels carries no info/EXIF/ICC/text chunks.
    clean = Image.frombytes("RGB", clean.size, clean.tobytes())
    width, height = clean.size
    buf = io.BytesIO()
    if width * height <= PNG_MAX_PIXELS:
        clean.save(buf, format="PNG", optimize=False, compress_level=6)
        ext = "png"
    else:
        clean.save(buf, format="JPEG", quality=JPEG_QUALITY, optimize=False, progressive=False)
        ext = "jpg"
    data = buf.getvalue()
    return StoredImage(
        data=data, sha256=hashlib.sha256(data).hexdigest(), ext=ext, width=width, height=height
    )


def image_to_png_bytes(img: Image.Image) -> bytes:
    """Encode ``img`` as PNG bytes (no metadata)."""
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _mib(n: int) -> str:
    return f"{n / (1024 * 1024):.1f} MiB" if n >= 1024 * 1024 else f"{n:,} bytes"
