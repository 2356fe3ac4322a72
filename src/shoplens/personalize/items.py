"""Build the :class:`~shoplens.personalize.types.ItemSpace` of a catalogue from its indexes."""

from __future__ import annotations

import numpy as np

from shoplens.catalog.store import Catalog, Product
from shoplens.errors import NotReadyError
from shoplens.index.build import default_image_encoder, default_text_encoder, text_index_name
from shoplens.index.store import load_build
from shoplens.personalize.types import ItemSpace


def item_space(catalog: Catalog, encoder: str | None = None, text: bool = True) -> ItemSpace:
    """Every indexed product of ``catalog`` with its image (and text) embeddings.

    Items are ordered by product id. Products added after the last index build are not
    recommendable until ``shoplens index build`` runs (the service reports a stale index).
    """
    build = load_build(catalog, encoder or default_image_encoder(catalog))
    products = catalog.get_by_ids([int(i) for i in build.ids])
    keep = np.array([int(i) in products for i in build.ids], dtype=bool)  # deleted since
    order = np.flatnonzero(keep)[np.argsort(build.ids[keep], kind="stable")]
    ids = np.asarray(build.ids[order], dtype=np.int64)
    image = np.ascontiguousarray(build.embeddings[order], dtype=np.float32)
    text_emb = None
    if text:
        try:
            tb = load_build(catalog, text_index_name(default_text_encoder(catalog)))
        except NotReadyError:
            tb = None
        if tb is not None:
            pos = {int(i): n for n, i in enumerate(tb.ids)}
            if all(int(i) in pos for i in ids):
                text_emb = np.ascontiguousarray(
                    tb.embeddings[[pos[int(i)] for i in ids]], dtype=np.float32
                )
    names = sorted({p.category for p in products.values()})
    code = {c: n for n, c in enumerate(names)}
    return ItemSpace(
        ids=ids,
        skus=[products[int(i)].sku for i in ids],
        categories=np.array([code[products[int(i)].category] for i in ids], dtype=np.int64),
        category_names=names,
        image=image,
        text=text_emb,
        encoder=build.encoder,
    )


def encoded_item_space(catalog: Catalog, products: list[Product], encoder: str) -> ItemSpace:
    """An :class:`ItemSpace` of ``products`` embedded now by ``encoder`` (one category),
    for pooling customers in another encoder's space than the catalogue index's."""
    from shoplens.registry import get_encoder

    emb = get_encoder(encoder).encode_images([catalog.load_image(p) for p in products])  # (P, E)
    return ItemSpace(
        ids=np.array([p.id for p in products], dtype=np.int64),
        skus=[p.sku for p in products],
        categories=np.zeros(len(products), dtype=np.int64),
        category_names=["all"],
        image=np.asarray(emb, dtype=np.float32),
        encoder=encoder,
    )
