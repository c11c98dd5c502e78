"""Fault injection on the request path: the faults that touch a request (the service's policies and,
where allowed, its X-DevMesh-Fault header) are decided once, then delay, abort, reset or throttle it.

Functions of the exchange (its first argument): the decision itself is `devmesh.faults.policy.decide`,
a pure function; the bandwidth throttle is set up with the response head (`response.py`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from devmesh.faults.policy import FaultHeaderError, FaultPolicy, decide, parse_fault_header
from devmesh.proxy.mirror_handoff import mirror_ready
from devmesh.proxy.pages import ErrorPage

if TYPE_CHECKING:
    from devmesh.mesh.snapshot import Endpoint, ServiceView
    from devmesh.proxy.exchange import Exchange


def inject(
    ex: Exchange, view: ServiceView, endpoints: list[Endpoint], faults: tuple[FaultPolicy, ...] | None
) -> bool:
    """Decide the faults for this request; True when they took it over (delayed, aborted, reset)."""
    server = ex.client.server
    policies = list(faults or ())
    if ex.fault_header is not None and server.allow_fault_header:
        try:
            policies.append(parse_fault_header(ex.fault_header.decode("latin-1"), view.name))
        except FaultHeaderError as error:
            ex.respond_error(ErrorPage(400, "Bad Request", str(error)))
            return True
    decision = decide(policies, ex.method.decode("latin-1"), ex.target.decode("latin-1"), ex.headers)
    if decision is None:
        return False
    ex.fault = decision
    server.stats.fault(decision.names)
    if decision.delay_s > 0:
        ex.fault_timer = server.loop.call_later(decision.delay_s, after_delay, ex, view, endpoints)
        if ex.mirror is not None:
            mirror_ready(ex, held=True)  # the delay is the real request's, not the copy's
        return True
    return fault_answers(ex, view)


def after_delay(ex: Exchange, view: ServiceView, endpoints: list[Endpoint]) -> None:
    ex.fault_timer = None
    if ex.done:
        return
    if not fault_answers(ex, view):
        ex._forward(view, endpoints)


def fault_answers(ex: Exchange, view: ServiceView) -> bool:
    """An abort or an outage answers in the service's place; True when one did."""
    fault = ex.fault
    assert fault is not None
    if fault.reset:
        ex.response_status = 0  # logged as a reset: no status reached the client
        ex.client.reset()
        ex._log()
        ex.done = True
        if ex.mirror is not None:
            mirror_ready(ex)
        return True
    if fault.abort is not None:
        ex.respond_error(
            ErrorPage(
                fault.abort,
                "Fault injected",
                f"devmesh's fault {fault.label!r} answered instead of {view.name}.",
                hint="`devmesh fault list` shows the faults; `devmesh fault rm NAME` or `devmesh fault clear` ends them",
                service=view.name,
            )
        )
        return True
    return False
