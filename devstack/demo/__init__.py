"""The demo and end-to-end estate: real customer servers, chat, tickets and a progress view.

Nothing here is part of a service. ``intervene demo``, the end-to-end tests and the pipeline
benchmark share it, so what the demo shows is exactly what the tests prove:

- :mod:`.targets` — sshd processes (on loopback, in a network namespace, or with simulated
  diagnostic tools), throwaway users, a SysV service and an apt repository;
- :mod:`.rescue_lab` — servers that boot from real disk images, their rescue system and a
  stand-in for the provider's rescue API (the locked-out server, and the rescue tests);
- :mod:`.manifest` — a durable list of everything created, so Ctrl-C, a crash or a later
  ``intervene demo --stop`` undoes exactly that;
- :mod:`.estate` — the three demo servers and their inventory (:mod:`.signatures`: the
  simulated failing disk);
- :mod:`.synapse` and :mod:`.chat` — a local Matrix homeserver with an on-call room;
- :mod:`.operator` — the provider's set-up through the operator's own commands;
- :mod:`.scenarios` — the demo tickets and the state each is expected to end in;
- :mod:`.helpdesk` — the two doors tickets come through (HTTP, the helpdesk topic);
- :mod:`.progress` — one ticket's state read from the bus; :mod:`.table` — the live table;
- :mod:`.launch` — the four services as subprocesses with a given configuration;
- :mod:`.runner` — ``intervene demo`` itself.
"""

# How long `intervene demo` waits for every ticket to settle before naming the stalled ones.
DEFAULT_TIMEOUT_S = 240.0
