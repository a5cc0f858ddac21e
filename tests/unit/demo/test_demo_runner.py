"""The demo hands each service only its own secrets, and the rescue lab's image is rebuilt
whenever any code that shapes it changes."""

from __future__ import annotations

import io
import os

import pytest

from devstack.demo import rescue_lab, runner
from devstack.demo.manifest import Manifest
from devstack.localstack import Component


class Recorded(Component):
    """A service component that records the environment it would start with."""

    started_with: dict[str, str] | None = None

    def record(self) -> None:
        return None  # not running yet

    def start(self) -> str:
        self.started_with = {**os.environ, **self.env}
        return f"{self.name}: started"


def test_the_rescue_api_token_reaches_the_executor_only(monkeypatch: pytest.MonkeyPatch
                                                        ) -> None:
    components = [Recorded(name=name, env={"OPS_HTTP_PORT": "1"})
                  for name in ("intake", "auth", "executor", "notifier")]
    monkeypatch.setattr(runner.localstack, "service_components", lambda: components)
    monkeypatch.delenv("EXECUTOR_RESCUE_API_TOKEN", raising=False)
    monkeypatch.delenv("MATRIX_PASSWORD", raising=False)
    demo = runner.Demo(out=io.StringIO(), keep=False, timeout_s=1, manifest=Manifest())
    executor_env = {"EXECUTOR_RESCUE_API_URL": "http://127.0.0.1:9",
                    "EXECUTOR_RESCUE_API_TOKEN": "provider-token"}
    runner._start_services(demo, {"executor": executor_env,
                                  "notifier": {"MATRIX_PASSWORD": "bot-password"}})
    started = {c.name: c.started_with or {} for c in components}
    assert started["executor"]["EXECUTOR_RESCUE_API_TOKEN"] == "provider-token"
    assert started["notifier"]["MATRIX_PASSWORD"] == "bot-password"
    for name, env in started.items():
        if name != "executor":
            assert "EXECUTOR_RESCUE_API_TOKEN" not in env, name
        if name != "notifier":
            assert "MATRIX_PASSWORD" not in env, name
        assert env["OPS_HTTP_PORT"] == "1"  # the component's own settings stay
    assert "EXECUTOR_RESCUE_API_TOKEN" not in os.environ  # nor in the demo's own process
    assert [e["name"] for e in demo.manifest.entries] == list(started)


def test_the_image_key_covers_every_function_that_shapes_the_image() -> None:
    source = rescue_lab.builder_source()
    for builder in ("_populate", "_write_etc", "attached", "chroot_mounts", "_build_image",
                    "_copy_path", "_is_elf", "run", "new_password"):
        assert f"\ndef {builder}(" in f"\n{source}", builder
    # Only the builder: the boot, the rescue system and the provider stand-in may change
    # without costing a rebuild.
    for other in ("BOOT_SCRIPT", "RESCUE_SCRIPT", "class LabServer", "class ProviderStandIn"):
        assert other not in source, other


def test_where_to_look_names_the_venv_script_when_intervene_is_not_on_path(
        monkeypatch: pytest.MonkeyPatch) -> None:
    # `make run` starts .venv/bin/intervene without activating .venv: a bare `intervene`
    # in the hints would not be found (or would be another checkout's).
    monkeypatch.setenv("PATH", "/nonexistent")
    command = runner.intervene_command()
    assert command != "intervene"
    assert command.endswith("bin/intervene")
    assert os.path.exists(command)
