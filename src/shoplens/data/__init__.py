"""Catalogue sources, manifests, safe image loading and datasets."""
