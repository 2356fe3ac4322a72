"""Adapters for user-supplied models: ``open_clip:``, ``hf-clip:`` and ``timm:`` specs.

Importing this package registers the adapters (see :mod:`shoplens.registry`); the
libraries they wrap are imported only when an encoder is created.
"""

from shoplens.adapters import hf_clip, open_clip_adapter, timm_adapter

__all__ = ["hf_clip", "open_clip_adapter", "timm_adapter"]
