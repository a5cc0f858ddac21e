"""Rescue mode: the provider's rescue system, booted and left through its API, and the
repairs the executor makes from it (see :mod:`services.executor.rescue.flow`)."""
