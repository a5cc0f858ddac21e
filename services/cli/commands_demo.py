"""``intervene demo``: the whole procedure on this machine (see :mod:`devstack.demo.runner`).

Exit status: 0 every ticket settled as expected; 1 a ticket stalled or ended elsewhere
(each is named with the reason); 2 the demo could not start; 130 interrupted.
"""

from __future__ import annotations

import argparse
from typing import Any

from devstack.demo import DEFAULT_TIMEOUT_S


def register(sub: Any) -> None:
    demo = sub.add_parser(
        "demo", help="run every kind of ticket through the whole system, live",
        description="Install what is missing, start the local stack, a Synapse with an "
                    "on-call room, three demo customer servers (healthy, a simulated failing "
                    "disk, locked out by its firewall) and the four services; submit one "
                    "ticket per scenario and follow each until it settles. Ctrl-C stops "
                    "everything the demo started, and only that. Needs root.")
    demo.add_argument("--keep", action="store_true",
                      help="leave the stack, Synapse and the demo servers running at the end")
    demo.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S, metavar="SECONDS",
                      help=f"give up on tickets not settled by then (default "
                           f"{DEFAULT_TIMEOUT_S:.0f})")
    demo.add_argument("--stop", action="store_true",
                      help="stop what an earlier `intervene demo --keep` left running")
    demo.set_defaults(func=_cmd_demo)


def _cmd_demo(args: argparse.Namespace) -> int:
    from devstack.demo.runner import DemoError, run_demo, stop_demo

    try:
        if args.stop:
            return stop_demo()
        return run_demo(keep=args.keep, timeout_s=args.timeout)
    except DemoError as exc:
        print(f"error: {exc}")
        return 2
