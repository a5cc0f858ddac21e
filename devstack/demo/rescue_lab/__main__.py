"""``python -m devstack.demo.rescue_lab``: the provider stand-in as its own process (its
configuration, token included, on stdin)."""

from __future__ import annotations

import json
import sys

from devstack.demo.rescue_lab.provider import serve

serve(json.loads(sys.stdin.read()))
