"""Helm for the chart tests: ``.cache/bin/helm``, built from the Go module proxy when missing.

The chart tests never skip for want of helm: a clean clone (CI) builds it once with the
machine's Go (about two minutes) into the git-ignored cache, and every later run reuses it.
"""

from __future__ import annotations

import fcntl
import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[3]
HELM_MODULE = "helm.sh/helm/v3/cmd/helm"
HELM_VERSION = "v3.21.4"


def cache_bin() -> Path:
    return Path(os.environ.get("INTERVENE_CACHE_DIR", ROOT / ".cache")) / "bin"


def ensure_helm() -> Path:
    binary = cache_bin() / "helm"
    binary.parent.mkdir(parents=True, exist_ok=True)
    with (binary.parent / ".helm.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # parallel sessions build it once
        if binary.exists():
            return binary
        go = shutil.which("go")
        if go is None:
            pytest.fail("helm is not in .cache/bin and `go` is not on PATH to build it: "
                        f"install Go, or put a helm {HELM_VERSION} binary at {binary}")
        built = subprocess.run(
            [go, "install", f"{HELM_MODULE}@{HELM_VERSION}"],
            env={**os.environ, "GOBIN": str(binary.parent), "CGO_ENABLED": "0"},
            capture_output=True, text=True, timeout=1200, check=False)
        if built.returncode != 0 or not binary.exists():
            pytest.fail(f"building helm {HELM_VERSION} failed:\n{built.stderr[-3000:]}")
    return binary


@pytest.fixture(scope="session")
def helm() -> Path:
    return ensure_helm()
