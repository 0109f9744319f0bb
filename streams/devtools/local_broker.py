"""A local Apache Kafka 4.0.2 broker without docker: ``recostream kafka start|stop|status``.

The broker's jars are resolved once with Maven from ``streams/devtools/broker/pom.xml`` into
``$RECOSTREAM_CACHE/kafka-4.0.2/libs``; the broker itself runs as one JVM in KRaft
combined mode (broker and controller in one node, every replication factor 1) on
loopback ports, with its data, logs, pid file and state file in one data directory
(default ``$RECOSTREAM_CACHE/broker``). ``start`` returns only once an admin client
really gets an answer and the topics of :data:`TOPICS` exist.

The process is detached (its own session) so that it outlives ``recostream kafka
start``; ``stop`` ends exactly the process named by the pid file and only after
checking that its command line is our ``kafka.Kafka`` with our properties file, so a
recycled pid is never killed. Nothing here ever kills by process name.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

from streams.devtools.broker_setup import (
    BROKER_JVM_OPTS,
    HOST,
    KAFKA_VERSION,
    TOOL_JVM_OPTS,
    BrokerSettings,
    ensure_jars,
    find_java,
    java_error,
    locked,
    new_cluster_id,
    render_log4j2_properties,
    render_server_properties,
)
from streams.errors import CliError
from streams.paths import cache_dir
from streams.runtime.topic_admin import DEFAULT_PARTITIONS, ensure_topics_sync

log = logging.getLogger(__name__)

DEFAULT_PORT = 9092
READY_TIMEOUT_S = 60.0
STOP_TIMEOUT_S = 30.0


# --- ports -------------------------------------------------------------------------------


def port_is_free(port: int, host: str = HOST) -> bool:
    """Whether a listener could bind ``host:port`` now (as the JVM does, with SO_REUSEADDR)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port(host: str = HOST, exclude: Iterable[int] = ()) -> int:
    """A port the kernel considers free now (another process could still take it first)."""
    excluded = set(exclude)
    while True:
        with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
            sock.bind((host, 0))
            port = int(sock.getsockname()[1])
        if port not in excluded:
            return port


# --- processes ---------------------------------------------------------------------------


def _cmdline(pid: int) -> list[str] | None:
    """The command line of ``pid``, or None when there is no such (live) process."""
    proc = Path(f"/proc/{pid}")
    if Path("/proc/self").exists():
        try:
            if _proc_state(proc / "stat") == "Z":
                return None  # finished (or finishing); only its exit status is left
            raw = (proc / "cmdline").read_bytes()
        except (OSError, IndexError):
            return None
        return [part.decode(errors="replace") for part in raw.split(b"\0") if part]
    result = subprocess.run(  # macOS and other systems without /proc
        ["ps", "-ww", "-p", str(pid), "-o", "command="],
        capture_output=True, text=True, check=False,
    )
    return result.stdout.split() if result.returncode == 0 and result.stdout.strip() else None


def _is_broker_process(pid: int, props: Path) -> bool:
    """Whether ``pid`` is alive and is ``kafka.Kafka`` run on our properties file."""
    cmd = _cmdline(pid)
    if cmd is None:
        with contextlib.suppress(ChildProcessError):
            # Reap it if it is our exited child, so that it does not linger as a zombie.
            os.waitpid(pid, os.WNOHANG)
        return False
    return "kafka.Kafka" in cmd and str(props) in cmd


def _gone(pid: int) -> bool:
    """Whether ``pid`` has exited completely (reaping it if it is our child).

    Used after signalling a process already identified as ours. A JVM's threads exit
    one by one, and its main thread can show as a zombie (and its command line read
    empty) while others still run, so only the whole process's end counts.
    """
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)  # our child: exact, and reaps it
    except ChildProcessError:
        pass  # someone else's child, or already reaped
    else:
        return done == pid
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    # Someone else's child that has not been reaped: gone once every thread is a zombie.
    tasks = Path(f"/proc/{pid}/task")
    if not Path("/proc/self").exists():
        result = subprocess.run(["ps", "-p", str(pid), "-o", "stat="],
                                capture_output=True, text=True, check=False)
        return result.stdout.strip().startswith("Z")
    try:
        states = [_proc_state(task / "stat") for task in tasks.iterdir()]
    except OSError:
        return not tasks.exists()
    return all(state in ("Z", "X") for state in states)


def _proc_state(stat_file: Path) -> str:
    """The state letter of a /proc ``stat`` file (after the parenthesised command name)."""
    return stat_file.read_text().rsplit(")", 1)[1].split()[0]


# --- the broker --------------------------------------------------------------------------


@dataclass(frozen=True)
class BrokerStatus:
    """What ``recostream kafka status`` reports."""

    running: bool
    data_dir: Path
    pid: int | None = None
    bootstrap: str | None = None
    controller: str | None = None
    started_at: float | None = None  # unix time


class LocalBroker:
    """One broker and its data directory.

    >>> broker = LocalBroker(Path("/tmp/example"), port=0)
    >>> broker.pid_file.name, broker.state_file.name
    ('broker.pid', 'state.json')

    ``port=None`` means 9092 when it is free, else any free port; ``port=0`` means any
    free port; any other value is used as given and must be free. Used as a context
    manager it starts the broker and stops it on exit, unless it was already running
    on entry (someone else's broker is left alone).

    ``start`` blocks and runs its own event loop; from async code call it in a thread
    (``await asyncio.to_thread(broker.start)``).
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        port: int | None = None,
        controller_port: int | None = None,
        partitions: int = DEFAULT_PARTITIONS,
        ready_timeout_s: float = READY_TIMEOUT_S,
        home: Path | None = None,
        report: Callable[[str], None] = log.info,
    ) -> None:
        # Resolved: stop and status recognise the process by the absolute path of its
        # properties file on its command line.
        self.data_dir = (data_dir or cache_dir() / "broker").resolve()
        self.port = port
        self.controller_port = controller_port
        self.partitions = partitions
        self.ready_timeout_s = ready_timeout_s
        self.home = home
        self.report = report
        self._proc: subprocess.Popen[bytes] | None = None
        self._started_here = False

    # Files in the data directory.
    @property
    def pid_file(self) -> Path:
        return self.data_dir / "broker.pid"

    @property
    def state_file(self) -> Path:
        return self.data_dir / "state.json"

    @property
    def props_file(self) -> Path:
        return self.data_dir / "server.properties"

    @property
    def log_file(self) -> Path:
        """The broker's own log (log4j2)."""
        return self.data_dir / "logs" / "server.log"

    @property
    def console_file(self) -> Path:
        """The JVM's stdout and stderr (crashes before logging starts end up here)."""
        return self.data_dir / "logs" / "console.log"

    @property
    def log_dir(self) -> Path:
        """Kafka's ``log.dirs``: the partitions and the KRaft metadata log."""
        return self.data_dir / "kafka-logs"

    # --- queries ---

    def _running_pid(self) -> int | None:
        """The pid in the pid file if that process is our broker, else None."""
        try:
            pid = int(self.pid_file.read_text().strip())
        except (OSError, ValueError):
            return None
        if self._proc is not None and self._proc.pid == pid and self._proc.poll() is not None:
            return None
        return pid if _is_broker_process(pid, self.props_file) else None

    def _read_state(self) -> dict[str, object]:
        try:
            state = json.loads(self.state_file.read_text())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def status(self) -> BrokerStatus:
        """Whether the broker of this data directory runs, and where."""
        pid = self._running_pid()
        if pid is None:
            return BrokerStatus(running=False, data_dir=self.data_dir)
        state = self._read_state()
        bootstrap = state.get("bootstrap")
        controller = state.get("controller")
        started_at = state.get("started_at")
        return BrokerStatus(
            running=True,
            data_dir=self.data_dir,
            pid=pid,
            bootstrap=bootstrap if isinstance(bootstrap, str) else None,
            controller=controller if isinstance(controller, str) else None,
            started_at=float(started_at) if isinstance(started_at, int | float) else None,
        )

    @property
    def bootstrap(self) -> str:
        """The running broker's bootstrap servers; CliError when it does not run."""
        current = self.status()
        if not current.running or current.bootstrap is None:
            raise CliError(f"no broker is running for {self.data_dir}")
        return current.bootstrap

    # --- start ---

    def start(self) -> str:
        """Start the broker (or find it running), create the topics; the bootstrap servers."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with locked(self.data_dir / ".lock"):
            current = self.status()
            if current.running and current.bootstrap:
                self.report(
                    f"broker already running at {current.bootstrap} "
                    f"(pid {current.pid}, data {self.data_dir})"
                )
                self._ensure_topics(current.bootstrap)
                return current.bootstrap
            self._remove_run_files()  # stale ones from a broker that died
            settings = self._settings()  # first: a taken --port is the cheapest error
            java = find_java()
            libs = ensure_jars(self.home, self.report)
            cluster_id = self._cluster_id()
            self._write_config(settings)
            self._format(java, libs, cluster_id)
            started = time.monotonic()
            proc = self._launch(java, libs, settings, cluster_id)
            try:
                self._wait_ready(proc, settings.bootstrap)
                self._ensure_topics(settings.bootstrap)
            except BaseException:  # Ctrl-C included: never leave a half-started broker
                self._terminate(proc.pid)
                self._remove_run_files()
                raise
            self._started_here = True
            self.report(
                f"Kafka {KAFKA_VERSION} ready at {settings.bootstrap} in "
                f"{time.monotonic() - started:.1f} s (pid {proc.pid}, data {self.data_dir})"
            )
            return settings.bootstrap

    def _settings(self) -> BrokerSettings:
        """Choose the ports: as given, else 9092 when free, else any free port."""
        if self.port is None:
            port = DEFAULT_PORT if port_is_free(DEFAULT_PORT) else free_port()
            if port != DEFAULT_PORT:
                self.report(f"port {DEFAULT_PORT} is in use; using {HOST}:{port} instead")
        elif self.port == 0:
            port = free_port()
        else:
            port = self.port
            if not port_is_free(port):
                raise CliError(f"port {port} on {HOST} is already in use")
        if not self.controller_port:  # None or 0: any free port
            controller_port = free_port(exclude=[port])
        else:
            controller_port = self.controller_port
            if controller_port == port:
                raise CliError("the broker and controller ports must differ")
            if not port_is_free(controller_port):
                raise CliError(f"port {controller_port} on {HOST} is already in use")
        return BrokerSettings(
            port=port,
            controller_port=controller_port,
            log_dir=self.log_dir,
            partitions=self.partitions,
        )

    def _cluster_id(self) -> str:
        """The id the storage was formatted with, or a new one for empty storage.

        Reusing it matters: formatting with ``--ignore-formatted`` skips a formatted
        directory, and a broker refuses a log dir whose id differs from the config's.
        """
        meta = self.log_dir / "meta.properties"
        with contextlib.suppress(OSError):
            for line in meta.read_text().splitlines():
                key, _, value = line.partition("=")
                if key.strip() == "cluster.id" and value.strip():
                    return value.strip()
        return new_cluster_id()

    def _write_config(self, settings: BrokerSettings) -> None:
        self.log_file.parent.mkdir(parents=True, exist_ok=True)
        self.props_file.write_text(render_server_properties(settings))
        (self.data_dir / "log4j2.properties").write_text(render_log4j2_properties(self.log_file))

    def _jvm_logging(self) -> list[str]:
        return [f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.properties'}"]

    def _format(self, java: str, libs: Path, cluster_id: str) -> None:
        cmd = [
            java, *TOOL_JVM_OPTS, *self._jvm_logging(), "-cp", str(libs / "*"),
            "kafka.tools.StorageTool", "format", "-t", cluster_id,
            "-c", str(self.props_file), "--ignore-formatted",
        ]
        result = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if result.returncode != 0:
            detail = java_error(result.stderr + result.stdout)
            raise CliError(f"formatting the broker storage failed: {detail}")

    def _launch(
        self, java: str, libs: Path, settings: BrokerSettings, cluster_id: str
    ) -> subprocess.Popen[bytes]:
        cmd = [
            java, *BROKER_JVM_OPTS, *self._jvm_logging(), "-cp", str(libs / "*"),
            "kafka.Kafka", str(self.props_file),
        ]
        with self.console_file.open("wb") as console:
            # Own session: the broker outlives this command and a Ctrl-C in the shell
            # that ran `recostream kafka start` does not reach it.
            proc = subprocess.Popen(
                cmd,
                stdin=subprocess.DEVNULL,
                stdout=console,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
                close_fds=True,
            )
        self._proc = proc  # kept to reap it: an exited child would linger as a zombie
        self.pid_file.write_text(f"{proc.pid}\n")
        state = {
            "pid": proc.pid,
            "bootstrap": settings.bootstrap,
            "controller": f"{settings.host}:{settings.controller_port}",
            "data_dir": str(self.data_dir),
            "cluster_id": cluster_id,
            "kafka_version": KAFKA_VERSION,
            "log": str(self.log_file),
            "started_at": time.time(),
        }
        self.state_file.write_text(json.dumps(state, indent=2) + "\n")
        return proc

    def _wait_ready(self, proc: subprocess.Popen[bytes], bootstrap: str) -> None:
        """Block until an admin client lists the topics, the process dies, or time runs out."""
        deadline = time.monotonic() + self.ready_timeout_s
        answered = asyncio.run(_await_broker(bootstrap, deadline, lambda: proc.poll() is None))
        if answered:
            return
        if proc.poll() is not None:
            raise CliError(
                f"broker exited with status {proc.returncode} before answering; "
                f"see {self._log_to_read()}\n{self._log_tail()}"
            )
        raise CliError(
            f"broker did not answer within {self.ready_timeout_s:g} s; "
            f"see {self._log_to_read()}\n{self._log_tail()}"
        )

    def _ensure_topics(self, bootstrap: str) -> None:
        result = ensure_topics_sync(bootstrap, partitions=self.partitions)
        if result.created:
            self.report(f"created topics: {', '.join(result.created)}")
        other = [f"{name} ({n})" for name, n in result.existing.items() if n != self.partitions]
        if other:
            self.report(
                f"warning: existing topics keep their partition counts, not {self.partitions}: "
                f"{', '.join(sorted(other))}; start on a new --data-dir to change them"
            )

    def _log_to_read(self) -> Path:
        has_log = self.log_file.is_file() and self.log_file.stat().st_size > 0
        return self.log_file if has_log else self.console_file

    def _log_tail(self, lines: int = 15) -> str:
        """The last lines of the broker log, and of the console when that has anything."""
        parts: list[str] = []
        for path in (self.log_file, self.console_file):
            with contextlib.suppress(OSError):
                # Continuation lines are mostly the config dump; stack traces keep
                # their "Caused by:" lines, which say more than the frames.
                records = path.read_text(errors="replace").splitlines()
                text = [r for r in records if r.strip() and not r[0].isspace()][-lines:]
                if text:
                    parts.append(f"--- last lines of {path} ---")
                    parts += ["  " + line for line in text]
        return "\n".join(parts) or "(the broker wrote no log)"

    # --- stop ---

    def stop(self, timeout_s: float = STOP_TIMEOUT_S) -> bool:
        """Stop the broker of the pid file (SIGTERM, then SIGKILL); False if none ran."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        with locked(self.data_dir / ".lock"):
            pid = self._running_pid()
            if pid is not None:
                self._terminate(pid, timeout_s)
            self._remove_run_files()
            self._started_here = False
            if self._proc is not None:
                self._proc.poll()  # record its exit even if another instance reaped it
            return pid is not None

    def _terminate(self, pid: int, timeout_s: float = STOP_TIMEOUT_S) -> None:
        """SIGTERM (Kafka shuts down cleanly), then SIGKILL after ``timeout_s``."""
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
        if not self._wait_gone(pid, timeout_s):
            self.report(f"broker pid {pid} ignored SIGTERM for {timeout_s:g} s; killing it")
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
            self._wait_gone(pid, 10.0)

    def _wait_gone(self, pid: int, timeout_s: float) -> bool:
        if self._proc is not None and self._proc.pid == pid:
            try:
                self._proc.wait(timeout_s)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout_s
        while not _gone(pid):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.1)
        return True

    def _remove_run_files(self) -> None:
        for path in (self.pid_file, self.state_file):
            path.unlink(missing_ok=True)

    # --- context manager ---

    def __enter__(self) -> LocalBroker:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self._started_here:
            self.stop()


@contextlib.contextmanager
def _quiet(logger_name: str) -> Iterator[None]:
    """Silence a logger for a while: aiokafka logs every refused connection as an ERROR,
    which is the expected state while the broker boots."""
    logger = logging.getLogger(logger_name)
    previous = logger.level
    logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(previous)


async def _await_broker(bootstrap: str, deadline: float, alive: Callable[[], bool]) -> bool:
    """Poll until ``list_topics`` succeeds (True), or the deadline passes or ``alive()``
    turns false (False)."""
    from aiokafka.admin import AIOKafkaAdminClient
    from aiokafka.errors import KafkaError

    host, _, port = bootstrap.rpartition(":")
    with _quiet("aiokafka"):
        while alive() and time.monotonic() < deadline:
            # A plain connect first: cheap, and it keeps aiokafka out of the way until
            # the socket is listening.
            if await _accepts(host, int(port)):
                admin = AIOKafkaAdminClient(bootstrap_servers=bootstrap, request_timeout_ms=5000)
                try:
                    async with asyncio.timeout(max(0.1, min(10.0, deadline - time.monotonic()))):
                        await admin.start()
                        await admin.list_topics()
                    return True
                except (KafkaError, OSError, TimeoutError):
                    pass
                finally:
                    await admin.close()
            await asyncio.sleep(0.2)
    return False


async def _accepts(host: str, port: int) -> bool:
    try:
        async with asyncio.timeout(1.0):
            _, writer = await asyncio.open_connection(host, port)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True
