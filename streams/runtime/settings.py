"""Worker settings, read from ``RECOSTREAM_*`` environment variables.

Every variable is optional; :data:`ENVIRONMENT` lists them with their defaults
(the README's settings table is generated from the same list). Invalid values
fail at start-up with a one-line message naming the variable.
"""

from __future__ import annotations

import os
import ssl
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from core.config import LIST_LENGTH, RANKING_NAMES, RecommenderConfig
from core.engagement import EngagementConfig
from core.events import MAX_ID_BYTES, MAX_MESSAGE_BYTES
from core.ratings import RatingWeights
from core.repurchase import REPEAT_MODES
from core.similarity import ROW_LOCAL_SIMILARITIES, SimilarityParams
from streams.errors import CliError
from streams.paths import cache_dir
from streams.runtime.bounds import record_bounds


def parse_bootstrap(bootstrap: str) -> list[tuple[str, int]]:
    """``host:port[,host:port...]`` as pairs; CliError when malformed. Faust's URL form
    (``kafka://host:port;host:port``, as ``$RECOSTREAM_BROKER`` may hold it) is accepted.

    >>> parse_bootstrap("127.0.0.1:9092, kafka://kafka:29092")
    [('127.0.0.1', 9092), ('kafka', 29092)]
    """
    pairs: list[tuple[str, int]] = []
    for part in bootstrap.replace(";", ",").split(","):
        host, sep, port = part.strip().split("://", 1)[-1].rpartition(":")
        if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
            raise CliError(f"bootstrap servers {bootstrap!r} are not host:port[,host:port...]")
        pairs.append((host.strip("[]"), int(port)))
    return pairs


def normalize_bootstrap(bootstrap: str) -> str:
    """The ``host:port,host:port`` form aiokafka takes.

    >>> normalize_bootstrap("kafka://a:9092;kafka://b:9092")
    'a:9092,b:9092'
    """
    return ",".join(f"{host}:{port}" for host, port in parse_bootstrap(bootstrap))


class SettingsError(ValueError):
    """A setting that cannot be used; the message names the variable."""


def _weights(text: str) -> RatingWeights:
    values: dict[str, float] = {}
    for part in filter(None, (p.strip() for p in text.split(","))):
        name, _, number = part.partition("=")
        if name.strip() not in {f.name for f in fields(RatingWeights)}:
            raise ValueError(f"unknown event type {name.strip()!r}")
        values[name.strip()] = float(number)
    return RatingWeights(**values)


def _bool(text: str) -> bool:
    lowered = text.strip().lower()
    if lowered in {"1", "true", "yes", "on"}:
        return True
    if lowered in {"0", "false", "no", "off"}:
        return False
    raise ValueError(f"{text!r} is not a boolean")


def _format(value: object) -> str:
    if isinstance(value, RatingWeights):
        return ",".join(f"{f.name}={getattr(value, f.name)!r}" for f in fields(value))
    if isinstance(value, bool):
        return "1" if value else "0"
    return str(value)


@dataclass(frozen=True)
class Setting:
    """One environment variable: the Settings field it sets, its parser and meaning."""

    variable: str
    field: str
    parse: Callable[[str], Any]
    help: str


@dataclass(frozen=True)
class Settings:
    """Everything a worker needs, passed explicitly (never read from globals)."""

    broker: str = "kafka://127.0.0.1:9092"
    app_id: str = "recostream"
    topic_prefix: str = ""
    partitions: int = 4
    store: str = "rocksdb://"
    data_dir: Path = field(default_factory=lambda: cache_dir() / "worker")
    web_host: str = "127.0.0.1"
    web_port: int = 6066
    web_enabled: bool = True
    advertised_host: str = ""
    http_token: str = field(default="", repr=False)
    k: int = LIST_LENGTH
    exposure_lists: int = 10_000
    ranker_customers: int = 5_000
    similarity: str = RecommenderConfig.similarity
    shrinkage: float = SimilarityParams.shrinkage
    neighbors: int = RecommenderConfig.neighbors
    history: int = RecommenderConfig.history
    pair_window: int = RecommenderConfig.pair_window
    recency_decay: float = RecommenderConfig.recency_decay
    popularity_weight: float = RecommenderConfig.popularity_weight
    popularity_half_life_days: float = RecommenderConfig.popularity_half_life_days
    max_row_width: int = RecommenderConfig.max_row_width
    ranking: str = RecommenderConfig.ranking
    repeat: str = RecommenderConfig.repeat
    weights: RatingWeights = field(default_factory=RatingWeights)
    refresh_seconds: float = 15.0
    commit_seconds: float = 10.0
    batch_size: int = 1000
    batch_seconds: float = 0.05
    dedup_ids: int = 256
    cache_keys: int = 100_000
    rows_processes: int = 2
    churn_seconds: float = 60.0
    loop_blocked_seconds: float = 1.0
    churn_threshold: float = EngagementConfig.churn_threshold
    churn_horizon_days: float = EngagementConfig.horizon_days
    churn_min_customers: int = EngagementConfig.min_customers_to_fit
    cart_window_seconds: float = EngagementConfig.cart_window_seconds
    max_user_ratings: int = RecommenderConfig.max_ratings
    max_user_purchases: int = RecommenderConfig.max_purchased
    max_cart_items: int = EngagementConfig.max_cart_items
    max_purchase_days: int = EngagementConfig.max_purchase_days
    max_message_bytes: int = MAX_MESSAGE_BYTES
    max_key_bytes: int = 1024
    max_record_bytes: int = 1_000_000
    max_future_seconds: float = 3600.0
    session_timeout: float = 60.0
    event_loop: str = "uvloop"
    security_protocol: str = "PLAINTEXT"
    sasl_mechanism: str = "PLAIN"
    sasl_username: str = ""
    sasl_password: str = field(default="", repr=False)
    ssl_cafile: str = ""

    def __post_init__(self) -> None:
        # Each value is checked against its variable's rule, so the message names
        # the variable a user would fix.
        for setting in ENVIRONMENT:
            rule = RULES.get(setting.field)
            value = getattr(self, setting.field)
            if rule is not None and not rule[0](value):
                raise SettingsError(f"{setting.variable}={_format(value)}: {rule[1]}")
        self.recommender_config()  # validates the model knobs
        self.engagement_config()
        for record, need in record_bounds(self).items():
            if need > self.max_record_bytes:
                raise SettingsError(
                    f"RECOSTREAM_MAX_RECORD_BYTES={self.max_record_bytes}: a {record} may "
                    f"take up to {need} bytes: lower those caps, or raise the record "
                    "limit if the broker's message.max.bytes allows")

    @property
    def paired_items(self) -> int:
        """Recent items a gained item is paired with (see RecommenderConfig)."""
        return self.recommender_config().paired_items

    def __repr__(self) -> str:
        # secrets never in a repr (and so never in a log or a traceback)
        shown = ", ".join(f"{f.name}={getattr(self, f.name)!r}" for f in fields(self)
                          if f.repr)
        return f"Settings({shown})"

    def engagement_config(self) -> EngagementConfig:
        """Thresholds of churn alerts and marketing triggers."""
        try:
            return EngagementConfig(
                churn_threshold=self.churn_threshold,
                cart_window_seconds=self.cart_window_seconds,
                horizon_days=self.churn_horizon_days,
                min_customers_to_fit=self.churn_min_customers,
                max_cart_items=self.max_cart_items,
                max_bought=self.max_user_purchases,
                max_purchase_days=self.max_purchase_days,
            )
        except ValueError as exc:
            raise SettingsError(str(exc)) from None

    def recommender_config(self) -> RecommenderConfig:
        """The core configuration the worker runs with (refreshes are timed, not counted)."""
        try:
            return RecommenderConfig(
                similarity=self.similarity,
                neighbors=self.neighbors,
                history=self.history,
                pair_window=self.pair_window,
                recency_decay=self.recency_decay,
                popularity_weight=self.popularity_weight,
                popularity_half_life_days=self.popularity_half_life_days,
                max_row_width=self.max_row_width,
                refresh_every=0,
                max_ratings=self.max_user_ratings,
                max_purchased=self.max_user_purchases,
                weights=self.weights,
                similarity_params=SimilarityParams(shrinkage=self.shrinkage),
                ranking=self.ranking,
                repeat=self.repeat,
                # the stream ranks with the fixed blend until it learns a ranker
                # of its own outcomes; the replay it is checked against does too
                learn_ranker=False,
            )
        except ValueError as exc:
            raise SettingsError(str(exc)) from None

    def topic(self, name: str) -> str:
        """The real name of a contract topic (``clicks``, ``recommendations``, ...)."""
        return self.topic_prefix + name

    @property
    def bootstrap_servers(self) -> str:
        """``host:port[,host:port]`` without Faust's ``kafka://`` scheme."""
        return normalize_bootstrap(self.broker)

    def kafka_client_options(self) -> dict[str, Any]:
        """Connection options of an aiokafka client for this broker (security included)."""
        options: dict[str, Any] = {"bootstrap_servers": self.bootstrap_servers,
                                   "security_protocol": self.security_protocol}
        if self.security_protocol in {"SASL_PLAINTEXT", "SASL_SSL"}:
            options.update(sasl_mechanism=self.sasl_mechanism,
                           sasl_plain_username=self.sasl_username,
                           sasl_plain_password=self.sasl_password)
        context = self.ssl_context()
        if context is not None:
            options["ssl_context"] = context
        return options

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of SSL and SASL_SSL connections (None otherwise)."""
        if self.security_protocol not in {"SSL", "SASL_SSL"}:
            return None
        return ssl.create_default_context(cafile=self.ssl_cafile or None)

    def with_overrides(self, **changes: Any) -> Settings:
        return replace(self, **changes)

    def to_env(self) -> dict[str, str]:
        """The ``RECOSTREAM_*`` variables that make :meth:`from_env` give these settings."""
        return {
            setting.variable: _format(getattr(self, setting.field)) for setting in ENVIRONMENT
        }

    @classmethod
    def from_env(cls, environ: Mapping[str, str] | None = None) -> Settings:
        env = os.environ if environ is None else environ
        values: dict[str, Any] = {}
        for setting in ENVIRONMENT:
            raw = env.get(setting.variable)
            if raw is None or raw == "":
                continue
            try:
                values[setting.field] = setting.parse(raw)
            except ValueError as exc:
                raise SettingsError(f"{setting.variable}={raw!r}: {exc}") from None
            rule = RULES.get(setting.field)
            if rule is not None and not rule[0](values[setting.field]):
                raise SettingsError(f"{setting.variable}={raw}: {rule[1]}")
        broker = values.get("broker")
        if isinstance(broker, str) and "://" not in broker:
            values["broker"] = "kafka://" + broker
        return cls(**values)


def _positive(value: float) -> bool:
    return value > 0


def _at_least_one(value: int) -> bool:
    return value >= 1


#: The worker's event loops, by setting value: the name mode gives each.
EVENT_LOOPS: dict[str, str] = {"uvloop": "uvloop", "asyncio": "aio"}

#: field -> (is the value usable, what it must be)
RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "partitions": (_at_least_one, "must be at least 1"),
    "web_port": (lambda v: 0 <= v <= 65535, "must be a port number"),
    "k": (_at_least_one, "must be at least 1"),
    "exposure_lists": (lambda value: value >= 10, "must be at least 10"),
    "ranker_customers": (lambda value: value >= 0, "must not be negative"),
    "similarity": (lambda v: v in ROW_LOCAL_SIMILARITIES,
                   "the stream refreshes each partition's rows alone, so it takes "
                   f"{' or '.join(sorted(ROW_LOCAL_SIMILARITIES))} (ease is an offline "
                   "option: recostream evaluate --similarity ease)"),
    "neighbors": (_at_least_one, "must be at least 1"),
    "shrinkage": (lambda v: v >= 0, "must not be negative"),
    "history": (_at_least_one, "must be at least 1"),
    "pair_window": (_at_least_one, "must be at least 1"),
    "recency_decay": (lambda v: 0 < v <= 1, "must be in (0, 1]"),
    "popularity_weight": (lambda v: v >= 0, "must not be negative"),
    "popularity_half_life_days": (_positive, "must be positive"),
    "max_row_width": (_at_least_one, "must be at least 1"),
    "ranking": (lambda v: v in RANKING_NAMES, f"must be one of {', '.join(RANKING_NAMES)}"),
    "repeat": (lambda v: v in REPEAT_MODES, f"must be one of {', '.join(REPEAT_MODES)}"),
    "refresh_seconds": (_positive, "must be positive"),
    "commit_seconds": (_positive, "must be positive"),
    "batch_size": (_at_least_one, "must be at least 1"),
    "batch_seconds": (_positive, "must be positive"),
    "dedup_ids": (lambda v: v >= 0, "must not be negative"),
    "cache_keys": (lambda v: v >= 0, "must not be negative"),
    "rows_processes": (_at_least_one, "must be at least 1"),
    "max_message_bytes": (_at_least_one, "must be at least 1"),
    "max_key_bytes": (lambda v: v >= MAX_ID_BYTES,
                      f"must be at least {MAX_ID_BYTES} (a user id's longest)"),
    "max_record_bytes": (lambda v: v >= 64 * 1024, "must be at least 65536"),
    "max_future_seconds": (lambda v: v >= 0, "must not be negative"),
    "max_user_ratings": (_at_least_one, "must be at least 1"),
    "max_user_purchases": (_at_least_one, "must be at least 1"),
    "max_cart_items": (_at_least_one, "must be at least 1"),
    "max_purchase_days": (lambda v: v >= 2, "must be at least 2"),
    "session_timeout": (_positive, "must be positive"),
    "event_loop": (lambda v: v in EVENT_LOOPS, f"must be {' or '.join(EVENT_LOOPS)}"),
    "churn_seconds": (lambda v: v >= 0, "must not be negative (0: at every refresh)"),
    "loop_blocked_seconds": (lambda v: v >= 0, "must not be negative (0: not watched)"),
    "churn_threshold": (lambda v: 0 < v < 1, "must be in (0, 1)"),
    "churn_horizon_days": (_positive, "must be positive"),
    "churn_min_customers": (_at_least_one, "must be at least 1"),
    "cart_window_seconds": (_positive, "must be positive"),
    "security_protocol": (lambda v: v in {"PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"},
                          "must be PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"),
    "sasl_mechanism": (lambda v: v in {"PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"},
                       "must be PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"),
}


ENVIRONMENT: tuple[Setting, ...] = (
    Setting("RECOSTREAM_BROKER", "broker", str, "Kafka bootstrap servers, host:port[,host:port]"),
    Setting("RECOSTREAM_APP_ID", "app_id", str, "consumer group and internal topic prefix"),
    Setting("RECOSTREAM_TOPIC_PREFIX", "topic_prefix", str,
            "prefix of the input and output topic names (e.g. shop1. for shop1.clicks)"),
    Setting("RECOSTREAM_PARTITIONS", "partitions", int,
            "partitions of clicks/purchases and of the internal topics"),
    Setting("RECOSTREAM_STORE", "store", str, "table store: rocksdb:// or memory://"),
    Setting("RECOSTREAM_DATA_DIR", "data_dir", Path, "where the worker keeps its table stores"),
    Setting("RECOSTREAM_WEB_HOST", "web_host", str, "HTTP bind address"),
    Setting("RECOSTREAM_WEB_PORT", "web_port", int, "HTTP port"),
    Setting("RECOSTREAM_WEB_ENABLED", "web_enabled", _bool, "serve HTTP lookups"),
    Setting("RECOSTREAM_ADVERTISED_HOST", "advertised_host", str,
            "host name other workers reach this one's HTTP port at (default: the bind "
            "address)"),
    Setting("RECOSTREAM_HTTP_TOKEN", "http_token", str,
            "bearer token every HTTP route but /health and /metrics requires (none: open)"),
    Setting("RECOSTREAM_K", "k", int, "items per published recommendation list"),
    Setting("RECOSTREAM_EXPOSURE_LISTS", "exposure_lists", int,
            "last published lists the exposure figures of /metrics are taken over"),
    Setting("RECOSTREAM_RANKER_CUSTOMERS", "ranker_customers", int,
            "customers whose last list the ranking child keeps to learn the ranking from "
            "what they do next (0: lists keep the fixed blend)"),
    Setting("RECOSTREAM_SIMILARITY", "similarity", str, "neighbour similarity: cosine or jaccard"),
    Setting("RECOSTREAM_SHRINKAGE", "shrinkage", float,
            "damps the similarity of rare pairs: s * c / (c + shrinkage), c their count"),
    Setting("RECOSTREAM_NEIGHBORS", "neighbors", int, "neighbours kept per item"),
    Setting("RECOSTREAM_HISTORY", "history", int, "recent items kept per user"),
    Setting("RECOSTREAM_PAIR_WINDOW", "pair_window", int,
            "recent items a newly gained item is paired with in co-occurrence"),
    Setting("RECOSTREAM_RECENCY_DECAY", "recency_decay", float,
            "weight of the r-th most recent item is decay**r"),
    Setting("RECOSTREAM_POPULARITY_WEIGHT", "popularity_weight", float,
            "weight of the trending prior"),
    Setting("RECOSTREAM_POPULARITY_HALF_LIFE_DAYS", "popularity_half_life_days", float,
            "event-time half-life of trending counts"),
    Setting("RECOSTREAM_MAX_ROW_WIDTH", "max_row_width", int,
            "co-occurrence pairs kept per item (weakest pruned)"),
    Setting("RECOSTREAM_RANKING", "ranking", str,
            "how lists are ranked: mix (similar items, trending, popular and buy-again "
            "together) or neighbours (similar items, then trending; nothing bought)"),
    Setting("RECOSTREAM_REPEAT", "repeat", str,
            "whether bought items come back in lists: learned (from each item's repeat "
            "rate), always or never"),
    Setting("RECOSTREAM_WEIGHTS", "weights", _weights,
            "implicit ratings, e.g. view=1,click=2,add_to_cart=3,purchase=5"),
    Setting("RECOSTREAM_REFRESH_SECONDS", "refresh_seconds", float,
            "seconds between neighbour refreshes"),
    Setting("RECOSTREAM_COMMIT_SECONDS", "commit_seconds", float,
            "seconds between offset commits (each first writes the changed rows of C)"),
    Setting("RECOSTREAM_BATCH_SIZE", "batch_size", int, "events per processing batch"),
    Setting("RECOSTREAM_BATCH_SECONDS", "batch_seconds", float,
            "longest wait to fill a batch"),
    Setting("RECOSTREAM_DEDUP_IDS", "dedup_ids", int, "event ids remembered per user"),
    Setting("RECOSTREAM_CACHE_KEYS", "cache_keys", int,
            "decoded users kept in memory (0: none; the rows processes hold the rows)"),
    Setting("RECOSTREAM_ROWS_PROCESSES", "rows_processes", int,
            "child processes holding the rows of C, each a share of the partitions"),
    Setting("RECOSTREAM_CHURN_SECONDS", "churn_seconds", float,
            "seconds between churn scoring and trigger checks of a partition"),
    Setting("RECOSTREAM_LOOP_BLOCKED_SECONDS", "loop_blocked_seconds", float,
            "warn, with the code holding it, when the event loop is blocked this long "
            "(0: not watched)"),
    Setting("RECOSTREAM_CHURN_THRESHOLD", "churn_threshold", float,
            "churn alert when P(alive) falls below this"),
    Setting("RECOSTREAM_CHURN_HORIZON_DAYS", "churn_horizon_days", float,
            "expected purchases are counted over this many days"),
    Setting("RECOSTREAM_CHURN_MIN_CUSTOMERS", "churn_min_customers", int,
            "customers needed to fit BG/NBD (fewer: the CDNOW prior)"),
    Setting("RECOSTREAM_CART_WINDOW_SECONDS", "cart_window_seconds", float,
            "add_to_cart without a purchase for this long (event time) is abandoned"),
    Setting("RECOSTREAM_MAX_USER_RATINGS", "max_user_ratings", int,
            "rated items kept per user, least recently rated evicted (at least HISTORY)"),
    Setting("RECOSTREAM_MAX_USER_PURCHASES", "max_user_purchases", int,
            "purchased items kept per user, least recently bought evicted"),
    Setting("RECOSTREAM_MAX_CART_ITEMS", "max_cart_items", int,
            "items in a user's cart, the earliest added evicted"),
    Setting("RECOSTREAM_MAX_PURCHASE_DAYS", "max_purchase_days", int,
            "distinct purchase days kept per customer (older ones counted, not kept)"),
    Setting("RECOSTREAM_MAX_MESSAGE_BYTES", "max_message_bytes", int,
            "larger input messages are dead-lettered"),
    Setting("RECOSTREAM_MAX_KEY_BYTES", "max_key_bytes", int,
            "input messages with a longer key are dead-lettered"),
    Setting("RECOSTREAM_MAX_RECORD_BYTES", "max_record_bytes", int,
            "largest record the worker writes (at most the broker's message.max.bytes)"),
    Setting("RECOSTREAM_MAX_FUTURE_SECONDS", "max_future_seconds", float,
            "events timed later than the wall clock plus this are dead-lettered"),
    Setting("RECOSTREAM_SESSION_TIMEOUT", "session_timeout", float,
            "consumer session timeout, seconds (a dead worker's partitions move after it)"),
    Setting("RECOSTREAM_EVENT_LOOP", "event_loop", str,
            "the worker's event loop: uvloop or asyncio"),
    Setting("RECOSTREAM_SECURITY_PROTOCOL", "security_protocol", str,
            "PLAINTEXT, SSL, SASL_PLAINTEXT or SASL_SSL"),
    Setting("RECOSTREAM_SASL_MECHANISM", "sasl_mechanism", str,
            "PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512"),
    Setting("RECOSTREAM_SASL_USERNAME", "sasl_username", str, "SASL user"),
    Setting("RECOSTREAM_SASL_PASSWORD", "sasl_password", str, "SASL password"),
    Setting("RECOSTREAM_SSL_CAFILE", "ssl_cafile", str, "CA bundle for SSL"),
)
