"""What a technician may do through the control socket; each call is recorded in the audit log by the server.

* ``results.resend`` — send the results of a study (or one object, or everything dead or rejected) again;
* ``outbox.requeue`` — make items the relay rejected pending again (all, or the ones named);
* ``ota.check`` / ``ota.apply`` / ``ota.rollback`` — model updates (the pipeline switches at its next idle moment);
* ``capacity.set`` — switch capacity sharing on or off (as ``btt-edge capacity enable|disable``; survives restarts).

Each returns a JSON-able result or raises an :class:`~edge.errors.EdgeError` whose message the technician sees.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from edge.control.state import AgentState
from edge.errors import ControlError

__all__ = ["ACTIONS", "Actions", "Updater", "Waker"]


class Updater(Protocol):
    """The OTA updater's technician actions (:class:`ota.updater.OtaUpdater`)."""

    def check(self) -> tuple[Any, str]: ...

    def apply(self, *, switch_now: bool = False) -> Any: ...

    def rollback(self, reason: str) -> Any: ...


class Waker(Protocol):
    """A service that can be told to look for work now (:class:`edge.results.service.ResultsService`)."""

    def wake(self) -> None: ...


@dataclass
class Actions:
    """The actions, bound to one agent's components."""

    state: AgentState
    connect: Callable[[], sqlite3.Connection]
    """A writable connection to the agent's database (the caller closes it)."""
    updater: Updater | None = None
    results: Waker | None = None

    def resend(self, params: dict[str, Any]) -> dict[str, Any]:
        from edge.results import queue

        study, obj = params.get("study_uid"), params.get("object_uid")
        states: tuple[queue.DeliveryState, ...] = (
            ("rejected", "dead", "sent") if (study or obj) else ("rejected", "dead")
        )
        conn = self.connect()
        try:
            if not queue.results_present(conn):
                raise ControlError("results delivery is not enabled on this agent ([results] enabled)")
            objects: list[str | None] = [str(obj)] if obj else [None]
            if study:
                objects = [*queue.study_objects(conn, str(study))]
                if not objects:
                    raise ControlError(f"study {study!r} has no result objects to send")
            count = 0
            for o in objects:
                count += queue.resend(conn, now=time.time(), object_uid=o, states=states)
        finally:
            conn.close()
        if self.results is not None:
            self.results.wake()
        return {"deliveries": count}

    def requeue(self, params: dict[str, Any]) -> dict[str, Any]:
        from edge.outbox import Outbox

        items = params.get("items")
        if items is not None and not (isinstance(items, list) and all(isinstance(i, str) for i in items)):
            raise ControlError("'items' must be a list of outbox item ids")
        conn = self.connect()
        try:
            return {"requeued": Outbox.requeue(conn, items)}
        finally:
            conn.close()

    def _updater(self) -> Updater:
        if self.updater is None:
            raise ControlError("this agent has no model updater")
        return self.updater

    def ota_check(self, _params: dict[str, Any]) -> dict[str, Any]:
        offer, verdict = self._updater().check()
        doc = {"offer": None if offer is None else offer.to_json(), "verdict": verdict, "checked_at": time.time()}
        self.state.last_offer = doc
        return doc

    def ota_apply(self, _params: dict[str, Any]) -> dict[str, Any]:
        result = self._updater().apply(switch_now=False)
        self.state.changed()
        return {
            "outcome": result.outcome,
            "model_id": result.model_id,
            "version": result.version,
            "detail": result.detail,
        }

    def ota_rollback(self, params: dict[str, Any]) -> dict[str, Any]:
        reason = str(params.get("reason") or "technician: control socket")
        state = self._updater().rollback(reason)
        self.state.changed()
        return {"outcome": "rolled-back", "active": state.active}

    def capacity_set(self, params: dict[str, Any]) -> dict[str, Any]:
        from edge.capacity.state import capacity_present, set_value

        enabled = params.get("enabled")
        if not isinstance(enabled, bool):
            raise ControlError("'enabled' must be true or false")
        conn = self.connect()
        try:
            if not capacity_present(conn):
                raise ControlError("capacity sharing has not run on this agent yet")
            set_value(conn, "enabled", enabled)  # the capacity service reads the switch every turn
        finally:
            conn.close()
        return {"enabled": enabled}


ACTIONS: dict[str, Callable[[Actions, dict[str, Any]], dict[str, Any]]] = {
    "results.resend": Actions.resend,
    "outbox.requeue": Actions.requeue,
    "ota.check": Actions.ota_check,
    "ota.apply": Actions.ota_apply,
    "ota.rollback": Actions.ota_rollback,
    "capacity.set": Actions.capacity_set,
}
"""Action name -> method; every call is audited."""
