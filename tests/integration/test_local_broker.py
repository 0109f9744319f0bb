"""The local broker launcher: rendering (fast, no broker) and a real Kafka 4.0.2 broker."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import re
import socket
import uuid
from pathlib import Path

import pytest
from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.admin import AIOKafkaAdminClient
from aiokafka.admin.config_resource import ConfigResource, ConfigResourceType

from streams.cli import main
from streams.devtools.broker_setup import (
    BrokerSettings,
    is_cluster_id,
    maven_error,
    new_cluster_id,
    render_log4j2_properties,
    render_server_properties,
)
from streams.devtools.local_broker import LocalBroker
from streams.errors import CliError
from streams.runtime.topic_admin import DEFAULT_PARTITIONS, TOPICS, TopicSpec, ensure_topics_sync

integration = pytest.mark.integration
REPO = Path(__file__).resolve().parents[2]


def _parse_properties(text: str) -> dict[str, str]:
    pairs = (line.split("=", 1) for line in text.splitlines() if line and line[0] != "#")
    return {key: value for key, value in pairs}


# --- fast: no broker ---------------------------------------------------------------------


def test_server_properties_describe_a_one_node_kraft_cluster(tmp_path: Path) -> None:
    settings = BrokerSettings(port=19092, controller_port=19093, log_dir=tmp_path / "logs",
                              partitions=6)
    props = _parse_properties(render_server_properties(settings))

    assert props["process.roles"] == "broker,controller"
    assert props["node.id"] == "1"
    assert props["controller.quorum.voters"] == "1@127.0.0.1:19093"
    assert props["listeners"] == "PLAINTEXT://127.0.0.1:19092,CONTROLLER://127.0.0.1:19093"
    assert props["advertised.listeners"] == "PLAINTEXT://127.0.0.1:19092"
    assert props["controller.listener.names"] == "CONTROLLER"
    assert props["log.dirs"] == str(tmp_path / "logs")
    assert props["group.initial.rebalance.delay.ms"] == "0"
    assert props["num.partitions"] == "6"
    replication = {k: v for k, v in props.items() if k.endswith(("replication.factor", "min.isr"))}
    assert {
        "offsets.topic.replication.factor",
        "transaction.state.log.replication.factor",
        "transaction.state.log.min.isr",
    } <= set(replication)
    assert set(replication.values()) == {"1"}
    assert settings.bootstrap == "127.0.0.1:19092"


def test_properties_values_escape_backslashes() -> None:
    settings = BrokerSettings(port=1, controller_port=2, log_dir=Path("/data/a\\b"))
    assert _parse_properties(render_server_properties(settings))["log.dirs"] == "/data/a\\\\b"


def test_log4j2_config_sends_the_broker_log_to_a_file(tmp_path: Path) -> None:
    text = render_log4j2_properties(tmp_path / "server.log")
    assert f"appender.file.fileName = {tmp_path / 'server.log'}" in text
    assert "rootLogger.appenderRef.file.ref = file" in text


def test_cluster_ids_are_22_char_base64url_of_16_random_bytes() -> None:
    ids = [new_cluster_id() for _ in range(500)]
    assert len(set(ids)) == len(ids)
    for cluster_id in ids:
        assert re.fullmatch(r"[A-Za-z0-9_-]{22}", cluster_id)
        assert not cluster_id.startswith("-")  # the Kafka tools would read it as an option
        assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16
        assert is_cluster_id(cluster_id)
    assert not is_cluster_id("-" + ids[0][1:])
    assert not is_cluster_id(ids[0] + "=")


def test_topic_registry_matches_docker_compose() -> None:
    compose = (REPO / "docker-compose.yml").read_text()
    created = re.findall(r"^\s*create ([a-z-]+)(.*)$", compose, flags=re.MULTILINE)
    assert [name for name, _ in created] == list(TOPICS)
    for name, rest in created:
        configs = dict(re.findall(r"--config (\S+)=(\S+)", rest))
        assert configs == dict(TOPICS[name].config), name
    assert TOPICS["item-neighbors"].config == {"cleanup.policy": "compact"}


def test_an_explicit_port_in_use_is_refused_before_java_starts(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        broker = LocalBroker(tmp_path, port=port)
        with pytest.raises(CliError, match=f"port {port} on 127.0.0.1 is already in use"):
            broker.start()
    assert not broker.pid_file.exists()
    assert not broker.status().running


def test_status_without_a_broker_exits_3(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["kafka", "status", "--data-dir", str(tmp_path)]) == 3
    assert "not running" in capsys.readouterr().out
    assert main(["kafka", "stop", "--data-dir", str(tmp_path)]) == 0
    assert "no broker running" in capsys.readouterr().out


def test_mvn_failures_are_reported_by_their_first_real_error() -> None:
    output = (
        "[ERROR] Failed to execute goal on project recostream-local-broker: Could not resolve "
        "dependencies for project io.recostream:recostream-local-broker:pom:4.0.2\n"
        "[ERROR] \n[ERROR] To see the full stack trace of the errors, re-run Maven with -e.\n"
        "[ERROR] -> [Help 1]\n"
    )
    assert maven_error(output).startswith("Failed to execute goal on project")
    assert maven_error("") == "no output"


# --- a real broker -----------------------------------------------------------------------


async def _describe(bootstrap: str) -> tuple[dict[str, int], dict[str, str]]:
    """Partition count per topic, and the item-neighbors topic's non-default configs."""
    admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap)
    await admin.start()
    try:
        topics = await admin.describe_topics(list(TOPICS))
        responses = await admin.describe_configs(
            [ConfigResource(ConfigResourceType.TOPIC, "item-neighbors")]
        )
    finally:
        await admin.close()
    counts = {t["topic"]: len(t["partitions"]) for t in topics if t["error_code"] == 0}
    (resource,) = responses[0].to_object()["resources"]
    configs = {
        entry["config_names"]: entry["config_value"] for entry in resource["config_entries"]
    }
    return counts, configs


@integration
def test_topics_exist_with_partition_counts_and_compaction(kafka_bootstrap: str) -> None:
    counts, configs = asyncio.run(_describe(kafka_bootstrap))
    assert counts == {name: DEFAULT_PARTITIONS for name in TOPICS}
    assert configs["cleanup.policy"] == "compact"


@integration
def test_ensure_topics_is_idempotent(kafka_bootstrap: str) -> None:
    report = ensure_topics_sync(kafka_bootstrap)
    assert report.created == ()
    assert dict(report.existing) == {name: DEFAULT_PARTITIONS for name in TOPICS}


async def _round_trip(bootstrap: str, topic: str) -> None:
    key, value = uuid.uuid4().hex.encode(), json.dumps({"user_id": "u1", "item_id": "i9"}).encode()
    producer = AIOKafkaProducer(bootstrap_servers=bootstrap, acks="all")
    await producer.start()
    try:
        sent = await producer.send_and_wait(topic, value, key=key)
    finally:
        await producer.stop()
    consumer = AIOKafkaConsumer(
        topic,
        bootstrap_servers=bootstrap,
        group_id=f"test-round-trip-{key.decode()}",  # a group: exercises the coordinator
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await consumer.start()
    try:
        async with asyncio.timeout(30):
            while True:
                batches = await consumer.getmany(timeout_ms=500)
                received = [m for msgs in batches.values() for m in msgs if m.key == key]
                if received:
                    break
    finally:
        await consumer.stop()
    (message,) = received
    assert (message.value, message.partition, message.offset) == (
        value, sent.partition, sent.offset
    )


@integration
def test_produce_consume_round_trip(kafka_bootstrap: str) -> None:
    # A scratch topic, so that tests reading the real topics from the start see
    # nothing of ours; creating it also exercises ensure_topics with custom specs.
    topic = f"test-round-trip-{uuid.uuid4().hex[:8]}"
    report = ensure_topics_sync(kafka_bootstrap, [TopicSpec(topic)], partitions=2)
    assert report.created == (topic,)
    asyncio.run(_round_trip(kafka_bootstrap, topic))


@integration
def test_status_reports_the_running_broker(
    kafka_broker: LocalBroker, kafka_bootstrap: str, capsys: pytest.CaptureFixture[str]
) -> None:
    status = LocalBroker(kafka_broker.data_dir).status()
    assert status.running
    assert status.bootstrap == kafka_bootstrap
    assert status.pid == int(kafka_broker.pid_file.read_text())
    assert status.data_dir == kafka_broker.data_dir
    state = json.loads(kafka_broker.state_file.read_text())
    assert state["pid"] == status.pid and state["bootstrap"] == kafka_bootstrap

    assert main(["kafka", "status", "--data-dir", str(kafka_broker.data_dir)]) == 0
    out = capsys.readouterr().out
    assert out.startswith("running")
    assert kafka_bootstrap in out and str(status.pid) in out and str(status.data_dir) in out


@integration
def test_a_second_start_finds_the_running_broker(
    kafka_broker: LocalBroker, kafka_bootstrap: str, capsys: pytest.CaptureFixture[str]
) -> None:
    pid = kafka_broker.status().pid
    assert main(["kafka", "start", "--data-dir", str(kafka_broker.data_dir)]) == 0
    out = capsys.readouterr().out
    assert f"already running at {kafka_bootstrap} (pid {pid}" in out
    assert LocalBroker(kafka_broker.data_dir, port=0).start() == kafka_bootstrap
    assert kafka_broker.status().pid == pid


@integration
def test_stop_ends_only_its_own_broker(
    tmp_path: Path, kafka_broker: LocalBroker, capsys: pytest.CaptureFixture[str]
) -> None:
    data_dir = tmp_path / "other"
    with LocalBroker(data_dir, port=0, partitions=1) as other:
        pid = other.status().pid
        assert pid is not None
        capsys.readouterr()

        assert main(["kafka", "stop", "--data-dir", str(data_dir)]) == 0
        assert f"stopped broker pid {pid}" in capsys.readouterr().out
        assert not other.pid_file.exists()
        with pytest.raises(ProcessLookupError):
            os.kill(pid, 0)  # gone, and reaped: not even a zombie is left
        assert main(["kafka", "status", "--data-dir", str(data_dir)]) == 3
        assert main(["kafka", "stop", "--data-dir", str(data_dir)]) == 0
        assert "no broker running" in capsys.readouterr().out
    assert kafka_broker.status().running  # the session's broker is untouched
