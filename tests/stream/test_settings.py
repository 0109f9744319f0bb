"""``streams.runtime.settings``: every RECOSTREAM_* variable, and refusals that name it."""

from __future__ import annotations

from dataclasses import fields, replace
from pathlib import Path
from typing import Any

import pytest

from core.config import RecommenderConfig
from core.engagement import EngagementConfig
from core.ratings import RatingWeights
from streams.runtime.settings import ENVIRONMENT, Settings, SettingsError

#: A valid, non-default value of every variable, and the field value it must give.
VALUES: dict[str, tuple[str, Any]] = {
    "RECOSTREAM_BROKER": ("kafka://k1:9093;kafka://k2:9093", "kafka://k1:9093;kafka://k2:9093"),
    "RECOSTREAM_APP_ID": ("shop-reco", "shop-reco"),
    "RECOSTREAM_TOPIC_PREFIX": ("shop1.", "shop1."),
    "RECOSTREAM_PARTITIONS": ("12", 12),
    "RECOSTREAM_STORE": ("memory://", "memory://"),
    "RECOSTREAM_DATA_DIR": ("/var/lib/reco", Path("/var/lib/reco")),
    "RECOSTREAM_WEB_HOST": ("0.0.0.0", "0.0.0.0"),
    "RECOSTREAM_WEB_PORT": ("8080", 8080),
    "RECOSTREAM_WEB_ENABLED": ("off", False),
    "RECOSTREAM_ADVERTISED_HOST": ("worker1.shop.internal", "worker1.shop.internal"),
    "RECOSTREAM_HTTP_TOKEN": ("t0ken", "t0ken"),
    "RECOSTREAM_K": ("25", 25),
    "RECOSTREAM_EXPOSURE_LISTS": ("500", 500),
    "RECOSTREAM_RANKER_CUSTOMERS": ("0", 0),
    "RECOSTREAM_SIMILARITY": ("jaccard", "jaccard"),
    "RECOSTREAM_SHRINKAGE": ("25", 25.0),
    "RECOSTREAM_NEIGHBORS": ("40", 40),
    "RECOSTREAM_HISTORY": ("80", 80),
    "RECOSTREAM_PAIR_WINDOW": ("30", 30),
    "RECOSTREAM_RECENCY_DECAY": ("0.5", 0.5),
    "RECOSTREAM_POPULARITY_WEIGHT": ("0.25", 0.25),
    "RECOSTREAM_POPULARITY_HALF_LIFE_DAYS": ("3.5", 3.5),
    "RECOSTREAM_MAX_ROW_WIDTH": ("500", 500),
    "RECOSTREAM_RANKING": ("neighbours", "neighbours"),
    "RECOSTREAM_REPEAT": ("never", "never"),
    "RECOSTREAM_WEIGHTS": (" view=0.5, purchase=9 ,", RatingWeights(view=0.5, purchase=9.0)),
    "RECOSTREAM_REFRESH_SECONDS": ("2.5", 2.5),
    "RECOSTREAM_COMMIT_SECONDS": ("4", 4.0),
    "RECOSTREAM_BATCH_SIZE": ("64", 64),
    "RECOSTREAM_BATCH_SECONDS": ("0.2", 0.2),
    "RECOSTREAM_DEDUP_IDS": ("32", 32),
    "RECOSTREAM_CACHE_KEYS": ("5000", 5000),
    "RECOSTREAM_ROWS_PROCESSES": ("3", 3),
    "RECOSTREAM_CHURN_SECONDS": ("15", 15.0),
    "RECOSTREAM_LOOP_BLOCKED_SECONDS": ("2.5", 2.5),
    "RECOSTREAM_CHURN_THRESHOLD": ("0.2", 0.2),
    "RECOSTREAM_CHURN_HORIZON_DAYS": ("90", 90.0),
    "RECOSTREAM_CHURN_MIN_CUSTOMERS": ("20", 20),
    "RECOSTREAM_CART_WINDOW_SECONDS": ("1800", 1800.0),
    "RECOSTREAM_MAX_USER_RATINGS": ("300", 300),
    "RECOSTREAM_MAX_USER_PURCHASES": ("100", 100),
    "RECOSTREAM_MAX_CART_ITEMS": ("20", 20),
    "RECOSTREAM_MAX_PURCHASE_DAYS": ("100", 100),
    "RECOSTREAM_MAX_MESSAGE_BYTES": ("4096", 4096),
    "RECOSTREAM_MAX_KEY_BYTES": ("512", 512),
    "RECOSTREAM_MAX_RECORD_BYTES": ("2000000", 2_000_000),
    "RECOSTREAM_MAX_FUTURE_SECONDS": ("600", 600.0),
    "RECOSTREAM_SESSION_TIMEOUT": ("12", 12.0),
    "RECOSTREAM_EVENT_LOOP": ("asyncio", "asyncio"),
    "RECOSTREAM_SECURITY_PROTOCOL": ("SASL_SSL", "SASL_SSL"),
    "RECOSTREAM_SASL_MECHANISM": ("SCRAM-SHA-512", "SCRAM-SHA-512"),
    "RECOSTREAM_SASL_USERNAME": ("reco", "reco"),
    "RECOSTREAM_SASL_PASSWORD": ("s3cret", "s3cret"),
    "RECOSTREAM_SSL_CAFILE": ("/etc/ssl/ca.pem", "/etc/ssl/ca.pem"),
}

#: Values no parser accepts, for the variables that have a parser beyond ``str``.
UNPARSEABLE: dict[str, str] = {
    "RECOSTREAM_PARTITIONS": "four",
    "RECOSTREAM_WEB_PORT": "80.5",
    "RECOSTREAM_WEB_ENABLED": "maybe",
    "RECOSTREAM_K": "10x",
    "RECOSTREAM_NEIGHBORS": "1e2",
    "RECOSTREAM_HISTORY": "-",
    "RECOSTREAM_PAIR_WINDOW": "fifty",
    "RECOSTREAM_RECENCY_DECAY": "high",
    "RECOSTREAM_POPULARITY_WEIGHT": "1,5",
    "RECOSTREAM_POPULARITY_HALF_LIFE_DAYS": "week",
    "RECOSTREAM_MAX_ROW_WIDTH": "wide",
    "RECOSTREAM_WEIGHTS": "like=3",
    "RECOSTREAM_REFRESH_SECONDS": "10s",
    "RECOSTREAM_COMMIT_SECONDS": "soon",
    "RECOSTREAM_BATCH_SIZE": "1k",
    "RECOSTREAM_BATCH_SECONDS": "0,2",
    "RECOSTREAM_DEDUP_IDS": "many",
    "RECOSTREAM_CACHE_KEYS": "lots",
    "RECOSTREAM_CHURN_SECONDS": "1min",
    "RECOSTREAM_LOOP_BLOCKED_SECONDS": "a second",
    "RECOSTREAM_CHURN_THRESHOLD": "30%",
    "RECOSTREAM_CHURN_HORIZON_DAYS": "month",
    "RECOSTREAM_CHURN_MIN_CUSTOMERS": "2.5",
    "RECOSTREAM_CART_WINDOW_SECONDS": "1h",
    "RECOSTREAM_MAX_MESSAGE_BYTES": "64KiB",
    "RECOSTREAM_MAX_USER_RATINGS": "all",
    "RECOSTREAM_MAX_RECORD_BYTES": "1MiB",
    "RECOSTREAM_MAX_FUTURE_SECONDS": "1h",
    "RECOSTREAM_SESSION_TIMEOUT": "1m",
}


def test_the_tables_cover_every_variable_and_every_field() -> None:
    variables = [s.variable for s in ENVIRONMENT]
    assert len(set(variables)) == len(variables)
    assert set(VALUES) == set(variables)
    assert all(v.startswith("RECOSTREAM_") for v in variables)
    setting_fields = [s.field for s in ENVIRONMENT]
    assert sorted(setting_fields) == sorted(f.name for f in fields(Settings))
    assert set(UNPARSEABLE) <= set(variables)
    assert all(s.help for s in ENVIRONMENT)


def test_from_env_parses_every_variable() -> None:
    settings = Settings.from_env({name: raw for name, (raw, _) in VALUES.items()})
    default = Settings()
    for setting in ENVIRONMENT:
        _, expected = VALUES[setting.variable]
        value = getattr(settings, setting.field)
        assert value == expected, setting.variable
        assert type(value) is type(expected), setting.variable
        assert value != getattr(default, setting.field), f"{setting.variable}: pick a non-default"


@pytest.mark.parametrize("variable", sorted(VALUES))
def test_each_variable_alone_sets_only_its_field(variable: str) -> None:
    raw, expected = VALUES[variable]
    settings = Settings.from_env({variable: raw, "UNRELATED": "x", "RECOSTREAM_": "y"})
    [setting] = [s for s in ENVIRONMENT if s.variable == variable]
    changed = {f.name for f in fields(Settings)
               if getattr(settings, f.name) != getattr(Settings(), f.name)}
    assert changed == {setting.field}
    assert getattr(settings, setting.field) == expected


def test_empty_environment_and_empty_values_give_the_defaults() -> None:
    assert Settings.from_env({}) == Settings()
    assert Settings.from_env({name: "" for name in VALUES}) == Settings()


def test_from_env_reads_the_process_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in VALUES:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("RECOSTREAM_K", "7")
    monkeypatch.setenv("RECOSTREAM_WEB_ENABLED", "1")
    settings = Settings.from_env()
    assert (settings.k, settings.web_enabled) == (7, True)


@pytest.mark.parametrize(("text", "expected"), [
    ("1", True), ("true", True), ("Yes", True), (" ON ", True),
    ("0", False), ("false", False), ("NO", False), ("off", False),
])
def test_booleans(text: str, expected: bool) -> None:
    assert Settings.from_env({"RECOSTREAM_WEB_ENABLED": text}).web_enabled is expected


@pytest.mark.parametrize(("raw", "broker", "bootstrap"), [
    ("127.0.0.1:9092", "kafka://127.0.0.1:9092", "127.0.0.1:9092"),
    ("k1:1,k2:2", "kafka://k1:1,k2:2", "k1:1,k2:2"),
    ("kafka://k1:1;kafka://k2:2", "kafka://k1:1;kafka://k2:2", "k1:1,k2:2"),
])
def test_broker_gets_a_scheme_and_bootstrap_servers_drop_it(
    raw: str, broker: str, bootstrap: str
) -> None:
    settings = Settings.from_env({"RECOSTREAM_BROKER": raw})
    assert settings.broker == broker
    assert settings.bootstrap_servers == bootstrap


def test_topic_prefix_names_contract_topics() -> None:
    settings = Settings.from_env({"RECOSTREAM_TOPIC_PREFIX": "shop1."})
    assert settings.topic("clicks") == "shop1.clicks"
    assert Settings().topic("recommendations") == "recommendations"


def test_weights_override_only_the_named_types() -> None:
    settings = Settings.from_env({"RECOSTREAM_WEIGHTS": "click=4"})
    assert settings.weights == RatingWeights(click=4.0)
    assert settings.recommender_config().weights.by_type()["click"] == 4.0


def test_recommender_config_carries_the_model_settings() -> None:
    settings = Settings.from_env({name: raw for name, (raw, _) in VALUES.items()})
    config = settings.recommender_config()
    assert (config.similarity, config.neighbors, config.history, config.pair_window) == (
        "jaccard", 40, 80, 30)
    assert (config.recency_decay, config.popularity_weight,
            config.popularity_half_life_days, config.max_row_width) == (0.5, 0.25, 3.5, 500)
    assert config.refresh_every == 0  # the stream refreshes on a timer
    assert (config.ranking, config.repeat) == ("neighbours", "never")
    assert config.weights == RatingWeights(view=0.5, purchase=9.0)
    assert (config.max_ratings, config.max_purchased) == (300, 100)
    assert config.similarity_params.shrinkage == 25.0  # a similarity's knobs reach the stream
    engagement = settings.engagement_config()
    assert (engagement.max_cart_items, engagement.max_bought,
            engagement.max_purchase_days) == (20, 100, 100)


def test_the_caps_default_to_the_core_defaults_stated_once() -> None:
    settings, config, engagement = Settings(), RecommenderConfig(), EngagementConfig()
    # the stream refreshes by time and learns no ranker yet (the fixed blend
    # orders its mix); everything else is core's default
    assert settings.recommender_config() == replace(config, refresh_every=0,
                                                    learn_ranker=False)
    assert (settings.max_user_ratings, settings.max_user_purchases) == (
        config.max_ratings, config.max_purchased)
    assert (settings.max_cart_items, settings.max_purchase_days) == (
        engagement.max_cart_items, engagement.max_purchase_days)


def test_caps_that_allow_a_record_over_the_limit_are_refused_naming_them() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"RECOSTREAM_MAX_USER_RATINGS": "5000"})
    message = str(info.value)
    assert message.startswith("RECOSTREAM_MAX_RECORD_BYTES=1000000: a user state")
    assert "RECOSTREAM_MAX_USER_RATINGS" in message
    with pytest.raises(SettingsError, match="row of C"):
        Settings.from_env({"RECOSTREAM_MAX_ROW_WIDTH": "5000"})
    # the same caps fit a broker that takes larger records
    Settings.from_env({"RECOSTREAM_MAX_USER_RATINGS": "5000",
                       "RECOSTREAM_MAX_RECORD_BYTES": "8000000"})


def test_secrets_are_never_in_a_repr() -> None:
    settings = Settings(sasl_password="pa55word", http_token="t0ken")
    assert "pa55word" not in repr(settings) and "t0ken" not in repr(settings)
    assert "pa55word" not in str(settings) and "sasl_username" in repr(settings)


@pytest.mark.parametrize("variable", sorted(UNPARSEABLE))
def test_an_unparseable_value_names_its_variable(variable: str) -> None:
    raw = UNPARSEABLE[variable]
    with pytest.raises(SettingsError) as info:
        Settings.from_env({variable: raw})
    message = str(info.value)
    assert message.startswith(f"{variable}={raw!r}: ")
    assert "\n" not in message


def test_ease_similarity_is_refused_with_the_reason_and_the_way_out() -> None:
    with pytest.raises(SettingsError) as info:
        Settings.from_env({"RECOSTREAM_SIMILARITY": "ease"})
    message = str(info.value)
    assert message.startswith("RECOSTREAM_SIMILARITY=ease: ")
    assert "cosine or jaccard" in message
    assert "recostream evaluate --similarity ease" in message
    with pytest.raises(SettingsError, match=r"^RECOSTREAM_SIMILARITY=pearson: "):
        Settings.from_env({"RECOSTREAM_SIMILARITY": "pearson"})


def test_unknown_event_loop_is_refused() -> None:
    with pytest.raises(SettingsError,
                       match=r"^RECOSTREAM_EVENT_LOOP=tokio: must be uvloop or asyncio$"):
        Settings.from_env({"RECOSTREAM_EVENT_LOOP": "tokio"})


def test_unknown_security_protocol_is_refused() -> None:
    with pytest.raises(SettingsError,
                       match=r"^RECOSTREAM_SECURITY_PROTOCOL=TLS: must be PLAINTEXT, SSL"):
        Settings.from_env({"RECOSTREAM_SECURITY_PROTOCOL": "TLS"})


@pytest.mark.parametrize(("variable", "raw"), [
    ("RECOSTREAM_PARTITIONS", "0"),
    ("RECOSTREAM_K", "0"),
    ("RECOSTREAM_EXPOSURE_LISTS", "9"),
    ("RECOSTREAM_RANKER_CUSTOMERS", "-1"),
    ("RECOSTREAM_BATCH_SIZE", "-1"),
    ("RECOSTREAM_NEIGHBORS", "0"),
    ("RECOSTREAM_RECENCY_DECAY", "1.5"),
    ("RECOSTREAM_POPULARITY_HALF_LIFE_DAYS", "0"),
    ("RECOSTREAM_CHURN_THRESHOLD", "1.5"),
    ("RECOSTREAM_CART_WINDOW_SECONDS", "0"),
    ("RECOSTREAM_MAX_ROW_WIDTH", "0"),
    ("RECOSTREAM_RANKING", "learned"),
    ("RECOSTREAM_REPEAT", "sometimes"),
    ("RECOSTREAM_BATCH_SECONDS", "-1"),
    ("RECOSTREAM_REFRESH_SECONDS", "0"),
    ("RECOSTREAM_COMMIT_SECONDS", "-2"),
    ("RECOSTREAM_MAX_MESSAGE_BYTES", "0"),
    ("RECOSTREAM_MAX_KEY_BYTES", "100"),
    ("RECOSTREAM_MAX_RECORD_BYTES", "1000"),
    ("RECOSTREAM_MAX_FUTURE_SECONDS", "-1"),
    ("RECOSTREAM_MAX_PURCHASE_DAYS", "1"),
    ("RECOSTREAM_SASL_MECHANISM", "GSSAPI"),
    ("RECOSTREAM_SECURITY_PROTOCOL", "plaintext"),
])
def test_an_out_of_range_value_names_its_variable(variable: str, raw: str) -> None:
    with pytest.raises(SettingsError, match=rf"^{variable}={raw}: "):
        Settings.from_env({variable: raw})


def test_tls_is_used_exactly_for_the_ssl_protocols() -> None:
    import ssl

    for protocol, tls in (("PLAINTEXT", False), ("SASL_PLAINTEXT", False), ("SSL", True),
                          ("SASL_SSL", True)):
        settings = Settings(security_protocol=protocol)
        assert isinstance(settings.ssl_context(), ssl.SSLContext) is tls, protocol
        assert ("ssl_context" in settings.kafka_client_options()) is tls, protocol
        assert ("sasl_mechanism" in settings.kafka_client_options()) is protocol.startswith(
            "SASL"), protocol
