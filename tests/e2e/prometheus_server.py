"""A real Prometheus scraping the session's four services, with the repository's rules.

The configuration is deploy/prometheus/prometheus.yml itself — its jobs, its external labels,
its rule files (deploy/prometheus/rules/*.yml) — with each job's target pointed at the port
the session gave that service, and scrape and rule evaluation every second instead of every
15 s, so that a few minutes of end-to-end run give ``rate()`` and ``increase()`` enough
samples. The binary is the one on ``PATH`` (Debian's ``prometheus`` package here and in CI);
its TSDB lives in a temporary directory.
"""

from __future__ import annotations

import contextlib
import json
import math
import shutil
import signal
import subprocess
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

from devstack.demo.targets import free_port

ROOT = Path(__file__).resolve().parents[2]
CONFIG = ROOT / "deploy" / "prometheus" / "prometheus.yml"
RULES = ROOT / "deploy" / "prometheus" / "rules"
INTERVAL = "1s"


class PrometheusError(RuntimeError):
    pass


@dataclass(frozen=True, kw_only=True)
class Series:
    labels: dict[str, str]
    values: list[tuple[float, float]]  # (unix time, value); NaN kept as NaN

    def peak(self) -> float:
        """The largest finite value, or NaN when the series never had one."""
        finite = [v for _, v in self.values if math.isfinite(v)]
        return max(finite) if finite else math.nan


def session_config(targets: Mapping[str, str]) -> dict[str, Any]:
    """deploy/prometheus/prometheus.yml with ``targets`` (job -> host:port) and 1 s cadence."""
    config: dict[str, Any] = yaml.safe_load(CONFIG.read_text(encoding="utf-8"))
    config["global"]["scrape_interval"] = INTERVAL
    config["global"]["evaluation_interval"] = INTERVAL
    config["global"]["scrape_timeout"] = INTERVAL
    config["rule_files"] = [str(RULES / "*.yml")]
    jobs = {job["job_name"] for job in config["scrape_configs"]}
    if jobs != set(targets):
        raise PrometheusError(f"prometheus.yml scrapes {sorted(jobs)}, the session runs "
                              f"{sorted(targets)}")
    for job in config["scrape_configs"]:
        job["static_configs"] = [{"targets": [targets[job["job_name"]]]}]
    return config


class PrometheusServer:
    """``prometheus`` as a subprocess on a free loopback port."""

    def __init__(self, workdir: Path, targets: Mapping[str, str]) -> None:
        binary = shutil.which("prometheus")
        if binary is None:
            raise PrometheusError("the prometheus binary is not installed (apt-get install "
                                  "prometheus)")
        self.workdir = workdir
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log_path = workdir / "prometheus.log"
        config = workdir / "prometheus.yml"
        config.write_text(yaml.safe_dump(session_config(targets)), encoding="utf-8")
        self._argv = [
            binary, f"--config.file={config}", f"--storage.tsdb.path={workdir / 'tsdb'}",
            f"--web.listen-address=127.0.0.1:{self.port}", "--log.level=warn",
            # Keep the TSDB head small and the process quiet: nothing else reads it.
            "--storage.tsdb.retention.time=1d",
        ]
        self._process: subprocess.Popen[bytes] | None = None
        self.started_at = math.nan

    def start(self, *, timeout: float = 30.0) -> None:
        with self.log_path.open("ab") as log:
            self._process = subprocess.Popen(self._argv, stdout=log, stderr=subprocess.STDOUT,
                                             stdin=subprocess.DEVNULL, cwd=self.workdir,
                                             start_new_session=True)
        self.started_at = time.time()
        deadline = time.monotonic() + timeout
        while True:
            if self._process.poll() is not None:
                raise PrometheusError(f"prometheus exited with {self._process.returncode}: "
                                      f"{self.log()[-3000:]}")
            with contextlib.suppress(OSError), \
                    urllib.request.urlopen(f"{self.url}/-/ready", timeout=2) as resp:  # noqa: S310
                if resp.status == 200:
                    return
            if time.monotonic() > deadline:
                raise PrometheusError(f"prometheus not ready in {timeout:.0f}s: "
                                      f"{self.log()[-3000:]}")
            time.sleep(0.2)

    def stop(self) -> None:
        process = self._process
        if process is None or process.poll() is not None:
            return
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=5)

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    # -- HTTP API ------------------------------------------------------------------------------

    def api(self, path: str, **params: str) -> Any:
        url = f"{self.url}/api/v1/{path}?{urllib.parse.urlencode(params)}"
        try:
            with urllib.request.urlopen(url, timeout=30) as resp:  # noqa: S310 - loopback
                body = json.loads(resp.read())
        except urllib.error.HTTPError as exc:
            body = json.loads(exc.read() or b"{}")
        if body.get("status") != "success":
            raise PrometheusError(f"{path} {params}: {body.get('errorType')}: "
                                  f"{body.get('error')}")
        return body["data"]

    def query(self, expr: str) -> list[Series]:
        """``expr`` evaluated now (an instant vector)."""
        data = self.api("query", query=expr)
        if data["resultType"] != "vector":
            raise PrometheusError(f"{expr!r}: a {data['resultType']}, not a vector")
        return [Series(labels=dict(r["metric"]), values=[(float(r["value"][0]),
                                                          float(r["value"][1]))])
                for r in data["result"]]

    def query_range(self, expr: str, *, start: float, end: float, step: float = 1.0
                    ) -> list[Series]:
        """``expr`` evaluated every ``step`` seconds from ``start`` to ``end``, as a Grafana
        time-series panel asks for it."""
        data = self.api("query_range", query=expr, start=f"{start:.3f}", end=f"{end:.3f}",
                        step=f"{step:g}")
        if data["resultType"] != "matrix":
            raise PrometheusError(f"{expr!r}: a {data['resultType']}, not a range")
        return [Series(labels=dict(r["metric"]),
                       values=[(float(t), float(v)) for t, v in r["values"]])
                for r in data["result"]]

    def targets(self) -> list[dict[str, Any]]:
        return list(self.api("targets", state="active")["activeTargets"])

    def rule_groups(self) -> list[dict[str, Any]]:
        return list(self.api("rules")["groups"])


@contextlib.contextmanager
def running(workdir: Path, targets: Mapping[str, str]) -> Iterator[PrometheusServer]:
    server = PrometheusServer(workdir, targets)
    server.start()
    try:
        yield server
    finally:
        server.stop()
