"""Vector indexes behind one protocol: exact numpy (reference) and FAISS (factory strings)."""

from shoplens.index.base import VectorIndex, load_index, make_index
from shoplens.index.exact import ExactIndex
from shoplens.index.faiss_index import FaissIndex

__all__ = ["ExactIndex", "FaissIndex", "VectorIndex", "load_index", "make_index"]
