"""Adapters (open_clip / hf-clip / timm) on tiny random models written to ``tmp_path``."""

from __future__ import annotations

import json
import string
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image, ImageDraw

from shoplens.errors import InvalidInputError, NotFoundError
from shoplens.registry import create_encoder

TINY_ARCH = "shoplens-test-tiny-clip"
TINY_CFG: dict[str, Any] = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 2, "width": 32, "head_width": 16, "patch_size": 8},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 2},
}
TEXTS = ["red dress", "blue jacket", "red dress", ""]


def images() -> list[Image.Image]:
    """Three small test images in different modes and sizes."""
    a = Image.new("RGB", (40, 30), (200, 20, 20))
    b = Image.new("RGB", (32, 32), (240, 240, 240))
    ImageDraw.Draw(b).ellipse((6, 6, 26, 26), fill=(10, 30, 220))
    c = Image.fromarray(np.tile(np.arange(32, dtype=np.uint8) * 8, (32, 1))).convert("RGBA")
    return [a, b, c]


def _normalize(t: torch.Tensor) -> np.ndarray:
    return torch.nn.functional.normalize(t.float(), dim=-1).numpy()


def _check_unit(x: np.ndarray, n: int, dim: int) -> None:
    assert x.shape == (n, dim) and x.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(x, axis=1), 1.0, atol=1e-5)


# ----------------------------------------------------------------------------- open_clip


@pytest.fixture(scope="module")
def tiny_open_clip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A registered tiny open_clip arch, its random model, a .pt file and a local-dir export."""
    import open_clip
    from safetensors.torch import save_file

    root = tmp_path_factory.mktemp("open_clip")
    (root / "configs").mkdir()
    (root / "configs" / f"{TINY_ARCH}.json").write_text(json.dumps(TINY_CFG))
    open_clip.add_model_config(root / "configs")
    torch.manual_seed(0)
    model, _, preprocess = open_clip.create_model_and_transforms(TINY_ARCH)
    model.eval()
    ckpt = root / "model.pt"
    torch.save(model.state_dict(), ckpt)
    export = root / "export"
    export.mkdir()
    config = {"model_cfg": TINY_CFG, "preprocess_cfg": {"mean": [0.5] * 3, "std": [0.5] * 3}}
    (export / "open_clip_config.json").write_text(json.dumps(config))
    save_file(
        {k: v.contiguous() for k, v in model.state_dict().items()},
        str(export / "open_clip_model.safetensors"),
    )
    return {"model": model, "preprocess": preprocess, "ckpt": ckpt, "export": export}


def _open_clip_reference(model: Any, preprocess: Any, texts: list[str]) -> tuple[Any, Any]:
    import open_clip

    tokenizer = open_clip.get_tokenizer(TINY_ARCH)
    with torch.no_grad():
        x = torch.stack([preprocess(im.convert("RGB")) for im in images()[:2]])
        img = model.encode_image(x, normalize=True).numpy()
        txt = model.encode_text(tokenizer(texts), normalize=True).numpy()
    return img, txt


def test_open_clip_checkpoint_file(tiny_open_clip: dict[str, Any]) -> None:
    spec = f"open_clip:{TINY_ARCH}:{tiny_open_clip['ckpt']}"
    enc = create_encoder(spec)
    assert enc.name == spec and enc.dim == 16 and enc.shared_space
    ref_img, ref_txt = _open_clip_reference(
        tiny_open_clip["model"], tiny_open_clip["preprocess"], TEXTS
    )
    img = enc.encode_images(images())
    _check_unit(img, 3, 16)
    np.testing.assert_allclose(img[:2], ref_img, atol=1e-5)
    txt = enc.encode_texts(TEXTS)
    _check_unit(txt, 4, 16)
    np.testing.assert_allclose(txt, ref_txt, atol=1e-5)


def test_open_clip_local_dir(tiny_open_clip: dict[str, Any]) -> None:
    export = tiny_open_clip["export"]
    model = tiny_open_clip["model"]
    for spec in (f"open_clip:{TINY_ARCH}:{export}", f"open_clip:{export}"):
        enc = create_encoder(spec)
        assert enc.name == spec and enc.dim == 16
        # The export's preprocess config (mean/std 0.5) is used, not the arch default.
        preprocess = enc.preprocess  # type: ignore[attr-defined]
        norm = [t for t in preprocess.transforms if type(t).__name__ == "Normalize"]
        assert tuple(norm[0].mean) == (0.5, 0.5, 0.5)
        x = torch.stack([preprocess(im.convert("RGB")) for im in images()[:2]])
        with torch.no_grad():
            ref = model.encode_image(x, normalize=True).numpy()
            tok = enc.tokenizer(TEXTS[:2])  # type: ignore[attr-defined]
            ref_txt = model.encode_text(tok, normalize=True).numpy()
        np.testing.assert_allclose(enc.encode_images(images()[:2]), ref, atol=1e-5)
        np.testing.assert_allclose(enc.encode_texts(TEXTS[:2]), ref_txt, atol=1e-5)


def test_open_clip_errors(tiny_open_clip: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="not found"):
        create_encoder(f"open_clip:{TINY_ARCH}:{tmp_path / 'missing.pt'}")
    with pytest.raises(NotFoundError, match=r"open_clip_config\.json"):
        create_encoder(f"open_clip:{TINY_ARCH}:{tmp_path}")  # folder without a config
    with pytest.raises(InvalidInputError, match="unknown open_clip architecture"):
        create_encoder(f"open_clip:No-Such-Arch:{tiny_open_clip['ckpt']}")
    with pytest.raises(InvalidInputError, match="ARCH:PATH"):
        create_encoder("open_clip:ViT-B-32")
    corrupt = tmp_path / "corrupt.pt"
    corrupt.write_bytes(b"\x00garbage")
    with pytest.raises(InvalidInputError, match="cannot load"):
        create_encoder(f"open_clip:{TINY_ARCH}:{corrupt}")
    other = tmp_path / "other.pt"
    torch.save({"visual.proj": torch.zeros(3, 3)}, other)
    with pytest.raises(InvalidInputError, match="does not match"):
        create_encoder(f"open_clip:{TINY_ARCH}:{other}")


def test_open_clip_hub_error_is_wrapped(monkeypatch: pytest.MonkeyPatch) -> None:
    import open_clip

    def offline(*args: Any, **kwargs: Any) -> Any:
        raise RuntimeError("Failed initial config/weights load from HF Hub org/repo: offline")

    monkeypatch.setattr(open_clip, "create_model_and_transforms", offline)
    with pytest.raises(InvalidInputError, match="offline"):
        create_encoder("open_clip:hf-hub:Marqo/marqo-fashionSigLIP")


# ----------------------------------------------------------------------------- hf-clip


def _tiny_tokenizer() -> Any:
    from transformers import CLIPTokenizer

    vocab = {"<|startoftext|>": 0, "<|endoftext|>": 1}
    for c in string.ascii_lowercase:
        vocab[c] = len(vocab)
        vocab[c + "</w>"] = len(vocab)
    vocab["re"] = len(vocab)
    vocab["red</w>"] = len(vocab)
    return CLIPTokenizer(vocab=vocab, merges=[("r", "e"), ("re", "d</w>")])


def _tiny_tower(**extra: Any) -> dict[str, Any]:
    cfg = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2)
    cfg.update(extra)
    return cfg


@pytest.fixture(scope="module")
def tiny_hf_clip(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """A random tiny ``CLIPModel`` + processor saved with ``save_pretrained``."""
    from transformers import CLIPConfig, CLIPImageProcessor, CLIPModel, CLIPProcessor

    folder = tmp_path_factory.mktemp("hf_clip")
    tok = _tiny_tokenizer()
    ip = CLIPImageProcessor(size={"shortest_edge": 32}, crop_size={"height": 32, "width": 32})
    text = _tiny_tower(vocab_size=len(tok), max_position_embeddings=16)
    text.update(bos_token_id=0, eos_token_id=1, pad_token_id=1)
    config = CLIPConfig(
        text_config=text,
        vision_config=_tiny_tower(image_size=32, patch_size=8),
        projection_dim=16,
    )
    torch.manual_seed(0)
    model = CLIPModel(config).eval()
    model.save_pretrained(folder)
    CLIPProcessor(image_processor=ip, tokenizer=tok).save_pretrained(folder)
    return {"model": model, "tok": tok, "ip": ip, "folder": folder}


def _pooled(out: Any) -> torch.Tensor:
    return out if isinstance(out, torch.Tensor) else out.pooler_output


def test_hf_clip_matches_model(tiny_hf_clip: dict[str, Any]) -> None:
    model, tok, ip = tiny_hf_clip["model"], tiny_hf_clip["tok"], tiny_hf_clip["ip"]
    spec = f"hf-clip:{tiny_hf_clip['folder']}"
    enc = create_encoder(spec)
    assert enc.name == spec and enc.dim == 16 and enc.shared_space
    rgb = [im.convert("RGB") for im in images()]
    with torch.no_grad():
        px = ip(images=rgb, return_tensors="pt")["pixel_values"]
        ref_img = _normalize(_pooled(model.get_image_features(pixel_values=px)))
        t = tok(TEXTS, padding=True, return_tensors="pt")
        ref_txt = _normalize(_pooled(model.get_text_features(**t)))
    img = enc.encode_images(images())
    _check_unit(img, 3, 16)
    np.testing.assert_allclose(img, ref_img, atol=1e-5)
    txt = enc.encode_texts(TEXTS)
    _check_unit(txt, 4, 16)
    np.testing.assert_allclose(txt, ref_txt, atol=1e-5)


def test_hf_siglip_separate_processor_files(tmp_path: Path) -> None:
    from transformers import SiglipConfig, SiglipImageProcessor, SiglipModel

    tok = _tiny_tokenizer()
    ip = SiglipImageProcessor(size={"height": 32, "width": 32})
    config = SiglipConfig(
        text_config=_tiny_tower(vocab_size=len(tok), max_position_embeddings=16),
        vision_config=_tiny_tower(image_size=32, patch_size=8),
    )
    torch.manual_seed(1)
    model = SiglipModel(config).eval()
    model.save_pretrained(tmp_path)
    tok.save_pretrained(tmp_path)
    ip.save_pretrained(tmp_path)
    enc = create_encoder(f"hf-clip:{tmp_path}")
    assert enc.dim == 32
    with torch.no_grad():
        px = ip(images=[im.convert("RGB") for im in images()], return_tensors="pt")
        ref_img = _normalize(_pooled(model.get_image_features(pixel_values=px["pixel_values"])))
        t = tok(TEXTS[:2], padding="max_length", max_length=16, return_tensors="pt")
        ref_txt = _normalize(_pooled(model.get_text_features(**t)))
    np.testing.assert_allclose(enc.encode_images(images()), ref_img, atol=1e-5)
    np.testing.assert_allclose(enc.encode_texts(TEXTS[:2]), ref_txt, atol=1e-5)


def test_hf_clip_errors(tiny_hf_clip: dict[str, Any], tmp_path: Path) -> None:
    with pytest.raises(NotFoundError, match="not found"):
        create_encoder(f"hf-clip:{tmp_path / 'missing'}")
    with pytest.raises(NotFoundError, match=r"config\.json"):
        create_encoder(f"hf-clip:{tmp_path}")
    (tmp_path / "config.json").write_text("{not json")
    with pytest.raises(InvalidInputError, match="cannot load a model"):
        create_encoder(f"hf-clip:{tmp_path}")


# ----------------------------------------------------------------------------- timm


def _timm_reference(state: dict[str, torch.Tensor], name: str = "test_resnet") -> np.ndarray:
    import timm
    from timm.data import create_transform, resolve_data_config

    model = timm.create_model(name, pretrained=False, num_classes=0).eval()
    model.load_state_dict(state)
    transform = create_transform(**resolve_data_config({}, model=model))
    with torch.no_grad():
        x = torch.stack([transform(im.convert("RGB")) for im in images()[:2]])
        return _normalize(model(x))


@pytest.fixture(scope="module")
def timm_state() -> dict[str, torch.Tensor]:
    """A random ``test_resnet`` state dict with a 10-class head."""
    import timm

    torch.manual_seed(0)
    return timm.create_model("test_resnet", pretrained=False, num_classes=10).state_dict()


def test_timm_pth_and_safetensors(timm_state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    from safetensors.torch import save_file

    body = {k: v for k, v in timm_state.items() if not k.startswith("fc.")}
    ref = _timm_reference(body)
    pth = tmp_path / "ckpt.pth"
    torch.save({"state_dict": {f"module.{k}": v for k, v in timm_state.items()}}, pth)
    st = tmp_path / "ckpt.safetensors"
    save_file({k: v.contiguous() for k, v in timm_state.items()}, str(st))
    for path in (pth, st):
        spec = f"timm:test_resnet:{path}"
        enc = create_encoder(spec)
        assert enc.name == spec and enc.modalities == {"image"}
        x = enc.encode_images(images())
        _check_unit(x, 3, enc.dim)
        np.testing.assert_allclose(x[:2], ref, atol=1e-5)
        with pytest.raises(InvalidInputError):
            enc.encode_texts(["red dress"])


def test_timm_errors(timm_state: dict[str, torch.Tensor], tmp_path: Path) -> None:
    import timm

    with pytest.raises(NotFoundError, match="not found"):
        create_encoder(f"timm:test_resnet:{tmp_path / 'missing.pth'}")
    with pytest.raises(InvalidInputError, match="unknown timm model"):
        create_encoder(f"timm:no_such_net:{tmp_path}")
    with pytest.raises(InvalidInputError, match="NAME:PATH"):
        create_encoder("timm:test_resnet")
    vit = tmp_path / "vit.pth"
    torch.save(timm.create_model("test_vit", num_classes=0).state_dict(), vit)
    with pytest.raises(InvalidInputError, match=r"\d+ missing, \d+ unexpected") as exc:
        create_encoder(f"timm:test_resnet:{vit}")
    assert "does not match the architecture" in str(exc.value)
    corrupt = tmp_path / "corrupt.safetensors"
    corrupt.write_bytes(b"garbage")
    with pytest.raises(InvalidInputError, match="cannot read checkpoint"):
        create_encoder(f"timm:test_resnet:{corrupt}")
