"""Encoders (image and text towers) behind one contract, see :mod:`shoplens.models.base`."""

from shoplens.models.base import Encoder, l2_normalize

__all__ = ["Encoder", "l2_normalize"]
