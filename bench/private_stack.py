"""A private Kafka broker and FerretDB on free ports in a directory of their own, that a
test or the chaos suite may stop, freeze (SIGSTOP), kill (SIGKILL) and restart.

The shared stack (127.0.0.1:9092 / 27017) is never touched: other runs use it. Both parts
come from the local stack's cache (``INTERVENE_CACHE_DIR``, default ``.cache/``: the Kafka
jars and the FerretDB binary that ``intervene up`` installs), and keep their data across a
restart - a restart here is what an operator's ``intervene up`` does after a crash.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path

from devstack import localstack
from devstack.demo.targets import free_port


def install_missing() -> None:
    """Fetch the broker's jars and build FerretDB into the cache when missing (what
    ``intervene up`` does on a fresh machine), so a clean clone runs the chaos suite."""
    if not any(localstack.kafka_libs().glob("kafka_2.13-*.jar")):
        localstack.install_kafka()
    if not localstack.ferretdb_binary().exists():
        localstack.install_ferretdb()


def unavailable() -> str | None:
    """Why a private stack cannot start here, or None."""
    if not any(localstack.kafka_libs().glob("kafka_2.13-*.jar")):
        return (f"no Kafka jars in {localstack.kafka_libs()} (set INTERVENE_CACHE_DIR to a "
                "cache where `intervene up` installed them)")
    if not localstack.ferretdb_binary().exists():
        return f"no FerretDB binary at {localstack.ferretdb_binary()}"
    return None


@dataclass
class Part:
    """One process of the private stack, restartable with the same command and data."""

    name: str
    directory: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def command(self) -> list[str]:
        raise NotImplementedError

    def ready(self) -> bool:
        raise NotImplementedError

    def start(self, timeout: float = 90.0) -> None:
        log = self.directory / f"{self.name}.log"
        with log.open("ab") as out:
            self.process = subprocess.Popen(self.command(), stdout=out, stderr=subprocess.STDOUT,
                                            stdin=subprocess.DEVNULL, cwd=self.directory,
                                            start_new_session=True)
        self.starts += 1
        deadline = time.monotonic() + timeout
        while not self.ready():
            if self.process.poll() is not None:
                raise RuntimeError(f"{self.name} exited with {self.process.returncode}: "
                                   f"{log.read_text(errors='replace')[-2000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout:.0f}s")
            time.sleep(0.2)

    def signal(self, sig: int) -> None:
        if self.process is not None and self.process.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, sig)

    def kill(self) -> None:
        self.signal(signal.SIGKILL)
        if self.process is not None:
            self.process.wait(timeout=30)

    def freeze(self) -> None:
        self.signal(signal.SIGSTOP)

    def thaw(self) -> None:
        self.signal(signal.SIGCONT)

    def stop(self) -> None:
        self.thaw()
        self.signal(signal.SIGTERM)
        if self.process is not None:
            try:
                self.process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill()


@dataclass
class PrivateKafka(Part):
    port: int = field(default_factory=free_port)
    controller_port: int = field(default_factory=free_port)

    @property
    def bootstrap(self) -> str:
        return f"127.0.0.1:{self.port}"

    def _properties(self) -> Path:
        props = self.directory / "server.properties"
        if not props.exists():
            template = (localstack.DEPLOY_LOCAL / "server.properties").read_text()
            props.write_text(template.replace("${LOG_DIR}", str(self.directory / "data"))
                             .replace("${KAFKA_PORT}", str(self.port))
                             .replace("${CONTROLLER_PORT}", str(self.controller_port)))
            (self.directory / "log").mkdir(exist_ok=True)
            cluster = localstack._kafka_uuid()  # never begins with "-" (an option to the tool)
            subprocess.run(localstack._kafka_java(
                "kafka.tools.StorageTool", "format", "--standalone", "-t", cluster,
                "-c", str(props), logs_dir=self.directory / "log"),
                check=True, capture_output=True)
        return props

    def command(self) -> list[str]:
        return localstack._kafka_java("kafka.Kafka", str(self._properties()),
                                      heap=("-Xms128m", "-Xmx384m"),
                                      logs_dir=self.directory / "log")

    def ready(self) -> bool:
        import asyncio

        from services.runtime.kafka_admin import cluster_metadata

        try:
            return asyncio.run(cluster_metadata(self.bootstrap, timeout=2.0)) is not None
        except Exception:  # noqa: BLE001 - not ready yet
            return False


@dataclass
class PrivateFerret(Part):
    port: int = field(default_factory=free_port)

    @property
    def uri(self) -> str:
        return f"mongodb://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        data = self.directory / "data"
        data.mkdir(parents=True, exist_ok=True)
        return [str(localstack.ferretdb_binary()), "--handler=sqlite",
                f"--sqlite-url=file:{data}/", "--telemetry=disable",
                f"--listen-addr=127.0.0.1:{self.port}", "--log-level=warn", "--debug-addr=-",
                f"--state-dir={data}"]

    def ready(self) -> bool:
        from pymongo import MongoClient

        try:
            with MongoClient(self.uri, serverSelectionTimeoutMS=500,
                             connectTimeoutMS=500) as client:
                client.admin.command("ping")
            return True
        except Exception:  # noqa: BLE001 - not ready yet
            return False


@dataclass
class PrivateStack:
    kafka: PrivateKafka
    ferret: PrivateFerret

    @classmethod
    def start(cls, directory: Path) -> PrivateStack:
        for sub in ("kafka", "ferretdb"):
            (directory / sub).mkdir(parents=True, exist_ok=True)
        stack = cls(kafka=PrivateKafka(name="kafka", directory=directory / "kafka"),
                    ferret=PrivateFerret(name="ferretdb", directory=directory / "ferretdb"))
        try:
            stack.ferret.start()
            stack.kafka.start()
        except BaseException:
            stack.stop()  # nothing of a failed start is left running
            raise
        return stack

    def stop(self) -> None:
        self.kafka.stop()
        self.ferret.stop()
