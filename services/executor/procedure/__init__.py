"""The OS intervention procedure as data: stages, events, commands and one pure transition.

``transition(state, event) -> (state, commands)`` is the whole procedure. It never touches
Kafka, MongoDB, SSH or the clock: the interpreter (:mod:`services.executor.intervention`)
carries out the commands and feeds back the event the last of them produced. Read this
module top to bottom to follow an intervention:

1. **claimed** — the claim was acquired; the stored verdict is checked again (the claim
   store is not trusted more than the bus). An edited verdict, a claim record the executor
   did not sign or one that does not follow from the verdict (another runbook, a re-opened
   closed claim, a forged review approval) is *refused*; so is a verdict past its age limit
   when the run would still act on the server. A run resumed
   after a crash goes straight to what is left: republishing a staged completion, the
   engineer's step it is parked on, or an engineer when it was interrupted too often.
2. **verified** — the customer's credentials are opened (in the interpreter's memory only:
   no secret is ever part of a state or a command).
3. **probing** — the SSH probe for work that can run on the live system; the host key may
   be refused, the credentials refused, the server unreachable.
4. **deciding** — the access decision (:func:`services.executor.access.select_access` plus
   the runbook's parameter check) is stored once; a resumed run keeps the first one.
5. **access_decided** — InterventionStarted is staged and published (refusals and questions
   to the customer go to *completing* without an announcement).
6. **connecting** / **running** / **rescue** — the runbook's steps over SSH or from the
   provider's rescue system (:mod:`services.executor.rescue.flow`). Each step k is
   pre-check → change → verify: its own table of edges and pure decisions in
   :mod:`services.executor.procedure.step`, carried out and journalled by the engine
   (:mod:`services.executor.runbooks.engine`).
7. **handing_over** → **waiting_for_engineer** — ManualStepRequested, then the claim is
   parked; the engineer's report or the step's deadline re-opens it.
8. **completing** → **closed** — hardware escalations and exactly one InterventionCompleted
   are staged in the claim's outbox and published; the claim is closed.

A lost lease stops the run in any stage (*stopped*): another executor owns the claim.

Every edge is declared in :data:`EDGES` and :func:`transition` can take no other (it
checks), so the table is the procedure, the state diagram in ``docs/architecture.md`` is
rendered from it (:func:`mermaid`), and the unit tests drive each edge with plain values.
"""


from __future__ import annotations

from services.executor.procedure.events import (
    Acquired,
    Announced,
    ClaimTampered,
    Connected,
    ConnectFailed,
    CredentialsOpened,
    CredentialsRefused,
    DeadlinePassed,
    DecisionRecorded,
    EngineerAsked,
    EngineerReported,
    Event,
    LeaseLost,
    ProbeFinished,
    Published,
    RunFinished,
    RunHandedOver,
    StillWaiting,
    VerdictChecked,
    VerdictRefused,
)
from services.executor.procedure.states import (
    EDGES,
    STAGES,
    TERMINAL,
    Config,
    Edge,
    Stage,
    State,
    mermaid,
)
from services.executor.procedure.transition import (
    IllegalTransition,
    decide_access,
    transition,
)

__all__ = [
    "EDGES", "STAGES", "TERMINAL", "Acquired", "Announced", "ClaimTampered", "Config",
    "ConnectFailed", "Connected", "CredentialsOpened", "CredentialsRefused", "DeadlinePassed",
    "DecisionRecorded", "Edge", "EngineerAsked", "EngineerReported", "Event",
    "IllegalTransition", "LeaseLost", "ProbeFinished", "Published", "RunFinished",
    "RunHandedOver", "Stage", "State", "StillWaiting", "VerdictChecked", "VerdictRefused",
    "decide_access", "mermaid", "transition",
]
