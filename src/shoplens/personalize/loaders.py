"""Loaders for public retail data sets: H&M Personalized Fashion Recommendations, RetailRocket.

The files can be gigabytes, so everything streams (stdlib ``csv``, one row at a time).
Event loaders yield raw event dicts for :meth:`EventStore.add
<shoplens.personalize.events.EventStore.add>` with deterministic ``event_id``\\ s, so
importing the same file twice stores every event once. A row that cannot be parsed
becomes a row with an ``"__error__"`` message, reported as a rejection by ``add``.

- H&M ``transactions_train.csv``: t_dat, customer_id, article_id, price, sales_channel_id.
  Each row is one purchase at noon UTC of ``t_dat``; the sku is the 10-digit zero-padded
  article id. Identical rows are genuine (several units bought) and get distinct ids.
- H&M ``articles.csv`` + ``images/``: :func:`hm_catalog_manifest` writes a shoplens
  catalogue manifest for the articles that have an image.
- RetailRocket ``events.csv``: timestamp (ms), visitorid, event, itemid, transactionid.
"""

from __future__ import annotations

import calendar
import csv
import hashlib
import io
import os
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path
from typing import Any

from shoplens.config import atomic_write
from shoplens.errors import InvalidInputError
from shoplens.personalize.events import ERROR_KEY, LINE_KEY, csv_records

HM_TRANSACTION_COLUMNS = ("t_dat", "customer_id", "article_id")
HM_OPTIONAL_COLUMNS = ("price", "sales_channel_id")
HM_ARTICLE_COLUMNS = ("article_id", "prod_name", "product_type_name")
# manifest attribute -> articles.csv column
HM_ATTRIBUTES = {
    "colour": "colour_group_name",
    "group": "product_group_name",
    "department": "department_name",
    "appearance": "graphical_appearance_name",
    "description": "detail_desc",
}
RR_COLUMNS = ("timestamp", "visitorid", "event", "itemid")
RR_TYPES = {"view": "view", "addtocart": "add_to_cart", "transaction": "purchase"}
NOON_S = 12 * 3600
_SEP = "\x1f"  # joins fields before hashing (never inside a CSV field of these data sets)

__all__ = [
    "hm_article_sku",
    "hm_catalog_manifest",
    "hm_events",
    "hm_image_path",
    "retailrocket_events",
]


# ---- shared --------------------------------------------------------------------------


def _sha1(*fields: str) -> str:
    return hashlib.sha1(_SEP.join(fields).encode("utf-8")).hexdigest()


def _error(line: int, message: str) -> dict[str, Any]:
    return {ERROR_KEY: message, LINE_KEY: line}


# ---- H&M -----------------------------------------------------------------------------


def hm_article_sku(article_id: str) -> str:
    """The canonical H&M sku: the article id as 10 zero-padded digits."""
    text = article_id.strip()
    if not text.isdigit() or not text.isascii() or len(text) > 10:
        raise InvalidInputError(f"invalid H&M article_id {article_id[:40]!r} (expected digits)")
    return text.zfill(10)


def hm_image_path(root: Path, sku: str) -> Path:
    """Where H&M keeps an article's image: ``images/<first 3 digits>/<sku>.jpg``."""
    return Path(root) / "images" / sku[:3] / f"{sku}.jpg"


def hm_events(path: str | Path) -> Iterator[dict[str, Any]]:
    """Purchase events from H&M ``transactions_train.csv`` (streamed).

    ``event_id`` is ``"hm-"`` + sha1 of the row's fields and the occurrence number of
    identical rows, so repeated identical rows (several units) are distinct events and a
    re-import yields the same ids. Identical rows are counted within each run of rows of
    the same day, so memory stays small: the published file is in date order (one run per
    day); in an unsorted file a day seen again starts a new, separately numbered run.
    """
    counts: dict[tuple[str, ...], int] = {}
    runs: dict[str, int] = {}  # day -> number of earlier runs of that day
    current: str | None = None
    for line, row in csv_records(Path(path), HM_TRANSACTION_COLUMNS, "H&M transactions file"):
        if isinstance(row, str):
            yield _error(line, row)
            continue
        day = row["t_dat"].strip()
        try:
            ts = calendar.timegm(datetime.strptime(day, "%Y-%m-%d").timetuple()) + NOON_S
        except ValueError:
            yield _error(line, f"line {line}: invalid t_dat {day[:40]!r} (expected YYYY-MM-DD)")
            continue
        try:
            sku = hm_article_sku(row["article_id"])
        except InvalidInputError as exc:
            yield _error(line, f"line {line}: {exc.message}")
            continue
        if day != current:
            runs[day] = runs.get(day, -1) + 1
            counts.clear()
            current = day
        customer = row["customer_id"].strip()
        key = (
            day,
            customer,
            sku,
            row.get("price", "").strip(),
            row.get("sales_channel_id", "").strip(),
        )
        n = counts.get(key, 0)
        counts[key] = n + 1
        run = runs[day]
        yield {
            "event_id": "hm-" + _sha1(*key, f"{run}.{n}" if run else str(n)),
            "customer_id": customer,
            "sku": sku,
            "type": "purchase",
            "timestamp": float(ts),
            LINE_KEY: line,
        }


def hm_catalog_manifest(root: str | Path, out: str | Path) -> tuple[Path, int, int]:
    """Write a shoplens CSV manifest for the H&M articles that have an image.

    ``root`` holds ``articles.csv`` and ``images/``. Columns: sku (10-digit article id),
    title (prod_name), category (product_type_name), image (absolute path) and the
    attributes colour, group, department, appearance and description. Ingest it with
    ``allow_outside_root=True`` unless ``out`` lies inside ``root`` (image paths must not
    leave the manifest's folder otherwise).

    Returns (manifest path, articles written, articles skipped: no image or a bad id).
    """
    root = Path(os.path.abspath(root))
    out = Path(out)
    articles = root / "articles.csv"
    columns = ["sku", "title", "category", "image", *HM_ATTRIBUTES]
    written = skipped = 0
    with atomic_write(out) as raw:
        text = io.TextIOWrapper(raw, encoding="utf-8", newline="")
        writer = csv.writer(text)
        writer.writerow(columns)
        for _, row in csv_records(articles, HM_ARTICLE_COLUMNS, "H&M articles file"):
            if isinstance(row, str):
                skipped += 1
                continue
            try:
                sku = hm_article_sku(row["article_id"])
            except InvalidInputError:
                skipped += 1
                continue
            image = hm_image_path(root, sku)
            if not image.is_file():
                skipped += 1
                continue
            category = row["product_type_name"].strip() or "uncategorized"
            title = row["prod_name"].strip() or f"{category} {sku}"
            attrs = [_one_line(row.get(col, "")) for col in HM_ATTRIBUTES.values()]
            writer.writerow([sku, title, category, str(image), *attrs])
            written += 1
        text.flush()
        text.detach()
        if written == 0:
            raise InvalidInputError(
                f"no article in {str(articles)!r} has an image under {str(root / 'images')!r} "
                "(expected e.g. images/010/0108775015.jpg)"
            )
    return out, written, skipped


def _one_line(value: str) -> str:
    return " ".join(value.split())


# ---- RetailRocket --------------------------------------------------------------------


def retailrocket_events(path: str | Path) -> Iterator[dict[str, Any]]:
    """Events from RetailRocket ``events.csv`` (streamed).

    customer_id ``"rr-<visitorid>"``, sku ``str(itemid)``, type view / add_to_cart /
    purchase, timestamp ms -> s, event_id ``"rr-"`` + sha1 of the row.
    """
    for line, row in csv_records(Path(path), RR_COLUMNS, "RetailRocket events file"):
        if isinstance(row, str):
            yield _error(line, row)
            continue
        ms = row["timestamp"].strip()
        visitor = row["visitorid"].strip()
        event = row["event"].strip()
        item = row["itemid"].strip()
        txn = row.get("transactionid", "").strip()
        try:
            ts: Any = int(ms) / 1000.0
        except ValueError:
            ts = ms  # validation reports it with the value
        yield {
            "event_id": "rr-" + _sha1(ms, visitor, event, item, txn),
            "customer_id": f"rr-{visitor}" if visitor else "",
            "sku": item,
            "type": RR_TYPES.get(event.lower(), event),
            "timestamp": ts,
            LINE_KEY: line,
        }
