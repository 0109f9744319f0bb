"""Installing and configuring a local Apache Kafka broker: its jars (resolved with
Maven from ``streams/devtools/broker/pom.xml`` into the cache once), Java, and its
configuration files (KRaft combined mode, one node, every replication factor 1).
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import importlib.resources
import logging
import os
import re
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

from streams.errors import CliError
from streams.paths import cache_dir
from streams.runtime.topic_admin import DEFAULT_PARTITIONS

log = logging.getLogger(__name__)

KAFKA_VERSION = "4.0.2"
HOST = "127.0.0.1"  # loopback only: this broker has no authentication
NODE_ID = 1

# 512 MiB to 1 GiB of heap serves the workloads here; the GC flags are those of Kafka's own
# kafka-server-start.sh, so the broker behaves as it would from the distribution.
BROKER_JVM_OPTS: tuple[str, ...] = (
    "-Xms512m",
    "-Xmx1g",
    "-XX:+UseG1GC",
    "-XX:MaxGCPauseMillis=20",
    "-XX:InitiatingHeapOccupancyPercent=35",
    "-XX:+ExplicitGCInvokesConcurrent",
    "-Djava.awt.headless=true",
)
# StorageTool only writes a few files: a small heap starts faster.
TOOL_JVM_OPTS: tuple[str, ...] = ("-Xmx256m", "-Djava.awt.headless=true")
MIN_JAVA = 17  # Kafka 4.0 brokers refuse older runtimes
# Fully qualified rather than `dependency:copy-dependencies`: resolving that prefix
# needs plugin metadata first, and fails with an obscure "No plugin found for prefix".
COPY_DEPENDENCIES_GOAL = "org.apache.maven.plugins:maven-dependency-plugin:3.8.1:copy-dependencies"



# --- rendering ---------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerSettings:
    """Everything that goes into server.properties."""

    port: int
    controller_port: int
    log_dir: Path
    partitions: int = DEFAULT_PARTITIONS
    host: str = HOST
    node_id: int = NODE_ID

    @property
    def bootstrap(self) -> str:
        return f"{self.host}:{self.port}"


def _escape(value: str) -> str:
    """A value safe for a Java properties file (backslash is its escape character)."""
    return value.replace("\\", "\\\\")


def render_server_properties(settings: BrokerSettings) -> str:
    """server.properties for a one-node KRaft cluster in combined mode.

    >>> text = render_server_properties(BrokerSettings(9092, 9093, Path("/d/kafka-logs")))
    >>> "listeners=PLAINTEXT://127.0.0.1:9092,CONTROLLER://127.0.0.1:9093" in text
    True
    """
    s = settings
    props: dict[str, str | int] = {
        "process.roles": "broker,controller",
        "node.id": s.node_id,
        # Static quorum: one voter, this node. (A dynamic quorum would need
        # `format --standalone`; with one node there is nothing to gain.)
        "controller.quorum.voters": f"{s.node_id}@{s.host}:{s.controller_port}",
        "listeners": f"PLAINTEXT://{s.host}:{s.port},CONTROLLER://{s.host}:{s.controller_port}",
        "advertised.listeners": f"PLAINTEXT://{s.host}:{s.port}",
        "controller.listener.names": "CONTROLLER",
        "inter.broker.listener.name": "PLAINTEXT",
        "listener.security.protocol.map": "PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT",
        "log.dirs": _escape(str(s.log_dir)),
        # One node: every internal topic must make do with one replica.
        "offsets.topic.replication.factor": 1,
        "transaction.state.log.replication.factor": 1,
        "transaction.state.log.min.isr": 1,
        "share.coordinator.state.topic.replication.factor": 1,
        "share.coordinator.state.topic.min.isr": 1,
        "default.replication.factor": 1,
        "min.insync.replicas": 1,
        # Topics created implicitly (by a producer's metadata request) get the same
        # partition count as ours, so they stay co-partitioned with the inputs.
        "num.partitions": s.partitions,
        # The default 3 s delay only helps when many members join at once; for tests
        # and a dev box it is 3 s lost on every first consumer-group join.
        "group.initial.rebalance.delay.ms": 0,
        # Left at its default of 9 s on purpose: a restart on an existing data dir waits
        # that long for the previous run's broker registration to expire, but a shorter
        # session could fence the only broker while a benchmark saturates the CPUs.
        "broker.session.timeout.ms": 9000,
        "auto.create.topics.enable": "true",
        "delete.topic.enable": "true",
    }
    lines = [f"# Written by recostream (streams/devtools/local_broker.py); Kafka {KAFKA_VERSION}."]
    lines += [f"{key}={value}" for key, value in props.items()]
    return "\n".join(lines) + "\n"


def render_log4j2_properties(log_file: Path) -> str:
    """A log4j2 configuration that sends everything at INFO and above to ``log_file``."""
    path = _escape(str(log_file))
    return "\n".join(
        [
            "# Written by recostream (streams/devtools/local_broker.py).",
            "status = warn",
            "appender.file.type = RollingFile",
            "appender.file.name = file",
            f"appender.file.fileName = {path}",
            f"appender.file.filePattern = {path}.%i",
            "appender.file.layout.type = PatternLayout",
            "appender.file.layout.pattern = [%d] %p %m (%c)%n",
            "appender.file.policies.type = Policies",
            "appender.file.policies.size.type = SizeBasedTriggeringPolicy",
            "appender.file.policies.size.size = 50MB",
            "appender.file.strategy.type = DefaultRolloverStrategy",
            "appender.file.strategy.max = 3",
            "rootLogger.level = info",
            "rootLogger.appenderRef.file.ref = file",
            # The state-change and request loggers are chatty at INFO; warnings suffice.
            "logger.statechange.name = state.change.logger",
            "logger.statechange.level = warn",
            "logger.request.name = kafka.request.logger",
            "logger.request.level = warn",
            "",
        ]
    )


_CLUSTER_ID_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]{21}$")


def new_cluster_id() -> str:
    """A KRaft cluster id: 16 random bytes, base64url without padding (22 characters).

    Like Kafka's ``Uuid.randomUuid`` it never starts with ``-``, which the command-line
    tools would take for an option.

    >>> len(new_cluster_id())
    22
    """
    while True:
        cluster_id = base64.urlsafe_b64encode(os.urandom(16)).rstrip(b"=").decode("ascii")
        if not cluster_id.startswith("-"):
            return cluster_id


def is_cluster_id(text: str) -> bool:
    """Whether ``text`` has the shape of a KRaft cluster id."""
    return bool(_CLUSTER_ID_RE.match(text))


# --- jars --------------------------------------------------------------------------------


def kafka_home() -> Path:
    """Where the broker's jars are cached: ``cache_dir()/kafka-4.0.2`` (``libs/`` inside)."""
    return cache_dir() / f"kafka-{KAFKA_VERSION}"


def _pom_bytes() -> bytes:
    return (importlib.resources.files("streams.devtools") / "broker" / "pom.xml").read_bytes()


@contextlib.contextmanager
def locked(path: Path) -> Iterator[None]:
    """An exclusive advisory lock on ``path``: parallel test sessions must not both
    download the jars into, or start a broker on, the same directory."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a") as fh:
        fcntl.flock(fh, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(fh, fcntl.LOCK_UN)


def ensure_jars(home: Path | None = None, report: Callable[[str], None] = log.info) -> Path:
    """The ``libs`` directory with Kafka's jars, resolving them with Maven the first time.

    A marker holding the pom's SHA-256 is written only after a complete download, so an
    interrupted one is redone and a changed pom (say, a new Kafka) is resolved afresh.
    """
    home = home or kafka_home()
    libs = home / "libs"
    marker = home / ".complete"
    pom = _pom_bytes()
    digest = hashlib.sha256(pom).hexdigest()

    def complete() -> bool:
        return libs.is_dir() and marker.is_file() and marker.read_text().strip() == digest

    if complete():
        return libs
    with locked(home / ".lock"):
        if complete():  # another process finished while we waited for the lock
            return libs
        mvn = shutil.which("mvn")
        if mvn is None:
            raise CliError("mvn not found on PATH (needed once to download the Kafka jars)")
        report(f"downloading Kafka {KAFKA_VERSION} jars with Maven into {libs} (once) ...")
        started = time.monotonic()
        # Maven gets its own copy of the pom: it may write next to it, and the
        # installed package directory can be read-only.
        pom_path = home / "pom.xml"
        pom_path.write_bytes(pom)
        partial = home / "libs.partial"
        shutil.rmtree(partial, ignore_errors=True)
        cmd = [
            mvn, "-B", "-q", "-Dstyle.color=never", "-f", str(pom_path),
            COPY_DEPENDENCIES_GOAL, f"-DoutputDirectory={partial}",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            raise CliError(f"mvn failed: {maven_error(result.stdout + result.stderr)}")
        jars = list(partial.glob("*.jar"))
        if not any(j.name.startswith(f"kafka_2.13-{KAFKA_VERSION}") for j in jars):
            raise CliError(f"mvn succeeded but no kafka_2.13-{KAFKA_VERSION}.jar in {partial}")
        shutil.rmtree(libs, ignore_errors=True)
        partial.rename(libs)
        marker.write_text(digest + "\n")
        report(f"{len(jars)} jars downloaded in {time.monotonic() - started:.1f} s")
    return libs


_ANSI_RE = re.compile(r"\x1b\[[0-9;]*m")


def maven_error(output: str) -> str:
    """The most telling line of Maven's output: its first ``[ERROR]`` that is not boilerplate."""
    boilerplate = ("To see the full", "Re-run Maven", "For more information", "[Help ")
    lines = [_ANSI_RE.sub("", line).strip() for line in output.splitlines()]
    errors = [
        line.removeprefix("[ERROR]").split(" -> [Help")[0].strip()
        for line in lines
        if line.startswith("[ERROR]")
    ]
    errors = [e for e in errors if e and not e.startswith(boilerplate)]
    if errors:
        return errors[0]
    lines = [line for line in lines if line]
    return lines[-1] if lines else "no output"


# --- java --------------------------------------------------------------------------------


def find_java() -> str:
    """``$JAVA_HOME/bin/java`` if set (as Kafka's scripts do), else ``java`` on PATH; >= 17."""
    java_home = os.environ.get("JAVA_HOME")
    candidate = Path(java_home) / "bin" / "java" if java_home else None
    java = str(candidate) if candidate and candidate.is_file() else shutil.which("java")
    if java is None:
        raise CliError("java not found on PATH (Kafka 4.0 needs Java 17 or newer)")
    result = subprocess.run([java, "-version"], capture_output=True, text=True, check=False)
    match = re.search(r'version "(\d+)(?:\.(\d+))?', result.stderr + result.stdout)
    if match:
        major = int(match.group(1))
        if major == 1 and match.group(2):  # "1.8.0_402" style
            major = int(match.group(2))
        if major < MIN_JAVA:
            raise CliError(f"Kafka {KAFKA_VERSION} needs Java {MIN_JAVA}+; {java} is Java {major}")
    return java


def java_error(output: str) -> str:
    """The telling line of a failed Java tool's output: its last exception message."""
    lines = [line.strip() for line in output.splitlines() if line.strip() and not line[0].isspace()]
    errors = [line for line in lines if re.search(r"(Exception|Error)\b", line)]
    if not (errors or lines):
        return "no output"
    return (errors or lines)[-1].removeprefix('Exception in thread "main" ')


