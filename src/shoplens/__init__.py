"""shoplens: image-based search and personalization for retail catalogues."""

from shoplens.errors import ShoplensError

__version__ = "0.1.0"
__all__ = ["ShoplensError", "__version__"]
