"""Development tooling, not part of the product: the Docker-free local stack
(:mod:`devstack.localstack`: Kafka from Maven jars, FerretDB, the four services as local
processes) and the demo (:mod:`devstack.demo`: lab servers, the helpdesk and provider
stand-ins, the on-call room).

It lives outside ``services/`` so the service distribution does not ship it (lab code runs
as root and builds disk images); ``intervene up|down|status|demo`` import it when run from
a source checkout.
"""
