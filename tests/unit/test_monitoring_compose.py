"""docker-compose.yml's optional monitoring: behind a profile, pinned, on loopback, and
wired to provisioning files that exist in the repository (no docker needed here)."""

from __future__ import annotations

from pathlib import Path, PurePosixPath
from typing import Any

import yaml

from streams.runtime.settings import Settings

REPO = Path(__file__).resolve().parents[2]
MONITORING = {"prometheus", "grafana"}


def load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def services() -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = load(REPO / "docker-compose.yml")["services"]
    return found


def bind_mounts(service: dict[str, Any]) -> dict[PurePosixPath, Path]:
    """Container path -> the repository path mounted there (short syntax, ./ sources)."""
    mounts = {}
    for volume in service.get("volumes", []):
        source, target, *_mode = volume.split(":")
        assert source.startswith("./"), f"{volume}: mount repository files only"
        mounts[PurePosixPath(target)] = REPO / source
    return mounts


def in_container(mounts: dict[PurePosixPath, Path], path: str) -> Path:
    """The repository path that a container path of a bind mount shows."""
    wanted = PurePosixPath(path)
    for target, source in mounts.items():
        if wanted == target or target in wanted.parents:
            return source / wanted.relative_to(target)
    raise AssertionError(f"{path} is not under a mount: {sorted(map(str, mounts))}")


def test_plain_up_starts_only_kafka_and_monitoring_is_behind_its_profile() -> None:
    found = services()
    assert set(found) >= MONITORING
    for name, service in found.items():
        if name in MONITORING:
            assert service["profiles"] == ["monitoring"], name
        else:
            assert "profiles" not in service, name
    assert {"kafka", "topics"} <= {n for n, s in found.items() if "profiles" not in s}
    # A service without the profile must not need one that has it.
    for name, service in found.items():
        if "profiles" not in service:
            assert not set(service.get("depends_on", {})) & MONITORING, name


def test_images_pinned_and_ports_on_loopback() -> None:
    for name, service in services().items():
        tag = service["image"].partition(":")[2]
        assert tag and tag != "latest" and any(c.isdigit() for c in tag), name
        for port in service.get("ports", []):
            assert port.startswith("127.0.0.1:"), f"{name}: {port}"


def test_mounted_files_exist() -> None:
    for name in MONITORING:
        for target, source in bind_mounts(services()[name]).items():
            assert source.exists(), f"{name}: {source} (mounted at {target}) is missing"


def test_prometheus_scrapes_the_worker_on_the_host() -> None:
    prometheus = services()["prometheus"]
    config = load(in_container(bind_mounts(prometheus), "/etc/prometheus/prometheus.yml"))
    targets = [t for job in config["scrape_configs"]
               for static in job["static_configs"] for t in static["targets"]]
    assert f"host.docker.internal:{Settings().web_port}" in targets
    assert all(job.get("metrics_path", "/metrics") == "/metrics"
               for job in config["scrape_configs"])
    assert "host.docker.internal:host-gateway" in prometheus["extra_hosts"]


def test_grafana_provisions_the_datasource_and_the_dashboard() -> None:
    found = services()
    grafana = found["grafana"]
    mounts = bind_mounts(grafana)
    datasources = in_container(mounts, "/etc/grafana/provisioning/datasources")
    [prometheus] = [d for f in sorted(datasources.glob("*.yml"))
                    for d in load(f)["datasources"] if d["type"] == "prometheus"]
    assert prometheus["url"] == "http://prometheus:9090" and prometheus["isDefault"]
    assert "prometheus" in found and "127.0.0.1:9090:9090" in found["prometheus"]["ports"]

    providers = in_container(mounts, "/etc/grafana/provisioning/dashboards")
    paths = [p["options"]["path"] for f in sorted(providers.glob("*.yml"))
             for p in load(f)["providers"]]
    assert paths
    dashboards = {d.name for p in paths for d in in_container(mounts, p).glob("*.json")}
    assert "recostream.json" in dashboards
    home = grafana["environment"]["GF_DASHBOARDS_DEFAULT_HOME_DASHBOARD_PATH"]
    assert in_container(mounts, home).is_file()


def test_readme_documents_the_monitoring_command() -> None:
    readme = (REPO / "README.md").read_text()
    assert "## Monitoring" in readme
    assert "docker compose --profile monitoring up -d" in readme
    assert "ops/grafana/dashboards/recostream.json" in readme
