"""The Faust app of a worker: its settings, from :class:`streams.runtime.settings.Settings`."""

from __future__ import annotations

import hmac
from collections.abc import Awaitable, Callable
from typing import Any, cast

import faust
from aiohttp import web as aiohttp_web

from streams.runtime.settings import Settings
from streams.runtime.transport import App

#: Bytes of records the producer puts in one batch per partition: a produce
#: request carries one batch per partition, and with aiokafka's 16 KiB batches
#: each wide row needed a request of its own.
PRODUCER_BATCH_BYTES = 512 * 1024
#: Faust's broker_commit_every high enough never to be reached: its
#: every-N-messages commit runs inside its fetch loop, and input stopped for as
#: long as the commit's producer flush took. Commits come from the timer only.
COMMIT_NEVER_BY_COUNT = 2**62
#: HTTP routes open without the bearer token: what monitoring polls.
OPEN_ROUTES = frozenset({"/health", "/metrics"})


def make_app(settings: Settings) -> App:
    """The worker's Faust app (transport fixed, see :mod:`streams.runtime.transport`)."""
    s = settings
    credentials: Any = None
    if s.security_protocol in {"SASL_PLAINTEXT", "SASL_SSL"}:
        credentials = faust.SASLCredentials(
            username=s.sasl_username,
            password=s.sasl_password,
            mechanism=s.sasl_mechanism,
            ssl_context=s.ssl_context(),
        )
    elif s.security_protocol == "SSL":
        credentials = faust.SSLCredentials(s.ssl_context())
    return App(
        s.app_id,
        broker=s.broker,
        broker_credentials=credentials,
        store=s.store,
        datadir=str(s.data_dir),
        topic_partitions=s.partitions,
        processing_guarantee="at_least_once",
        key_serializer="raw",
        value_serializer="raw",
        web_enabled=s.web_enabled,
        web_port=s.web_port,
        web_bind=s.web_host,
        # what other workers reach this one at (forwarded lookups)
        canonical_url=f"http://{s.advertised_host or s.web_host}:{s.web_port}",
        # Faust's own /table routes return any key's raw state, and /router the
        # group's addresses: not for the outside (lookups route without them)
        web_router_enabled=False,
        web_tables_enabled=False,
        web_application_options={"middlewares": [require_bearer_token(s.http_token)]}
        if s.http_token else None,
        broker_session_timeout=s.session_timeout,
        broker_heartbeat_interval=max(0.5, min(3.0, s.session_timeout / 10)),
        consumer_auto_offset_reset="earliest",
        stream_wait_empty=False,
        table_standby_replicas=0,
        producer_max_request_size=max(1_048_576, 4 * s.max_message_bytes),
        producer_max_batch_size=PRODUCER_BATCH_BYTES,
        broker_commit_every=COMMIT_NEVER_BY_COUNT,
        # each commit writes every row of C changed since the last one: a hot row
        # once per commit however often it changed
        broker_commit_interval=s.commit_seconds,
        table_key_serializer="json",
        table_value_serializer="json",
    )


def require_bearer_token(token: str) -> Callable[..., Awaitable[Any]]:
    """aiohttp middleware: every route but :data:`OPEN_ROUTES` wants
    ``Authorization: Bearer <token>``, compared in constant time; 401 otherwise.
    Forwarded lookups carry the header on to the worker that owns the user."""
    expected = f"Bearer {token}".encode()

    @aiohttp_web.middleware
    async def check(request: aiohttp_web.Request,
                    handler: Callable[..., Awaitable[Any]]) -> Any:
        if request.path in OPEN_ROUTES:
            return await handler(request)
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, expected):
            return aiohttp_web.json_response({"error": "a valid bearer token is required"},
                                             status=401, headers={"WWW-Authenticate": "Bearer"})
        return await handler(request)

    return cast(Callable[..., Awaitable[Any]], check)
