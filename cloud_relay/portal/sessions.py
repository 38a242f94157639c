"""Portal sessions: a clinic or operator token exchanged for a session id kept in an HttpOnly cookie.

Signing in checks the token with the registry (:meth:`~cloud_relay.registry.Registry.is_admin_token` for an
operator, :meth:`~cloud_relay.registry.Registry.clinic_for_token` for a clinic) and stores a new session; the
token itself is never stored or put in a cookie. The cookie holds a random session id; the table keeps only its
SHA-256, so a copy of the database opens no session. A session ends at its expiry (absolute, from sign-in) or at
sign-out; expired rows are deleted when next met and at every sign-in.

Table (own schema version ``portal_schema``, SQLite and PostgreSQL)::

    portal_sessions   id_hash PK, role ('clinic' | 'operator'), clinic (NULL for an operator), csrf,
                      created_ms, expires_ms
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from cloud_relay.errors import Unauthorized
from cloud_relay.portal.csrf import new_token
from cloud_relay.registry import Registry
from cloud_relay.storage import Database

__all__ = ["MIGRATIONS", "SESSION_COOKIE", "Principal", "Session", "SessionStore", "migrate_portal"]

SESSION_COOKIE = "btt_session"

MIGRATIONS = [
    """
    CREATE TABLE portal_sessions (
        id_hash TEXT PRIMARY KEY, role TEXT NOT NULL, clinic TEXT, csrf TEXT NOT NULL,
        created_ms BIGINT NOT NULL, expires_ms BIGINT NOT NULL
    );
    CREATE INDEX portal_sessions_expiry ON portal_sessions (expires_ms)
    """
]


def migrate_portal(db: Database) -> None:
    """Create or upgrade the portal's tables (serialised across workers like the relay's own schema)."""
    with db.transaction() as tx:
        tx.lock_devices(["portal-schema"])
        tx.execute("CREATE TABLE IF NOT EXISTS portal_schema (version BIGINT NOT NULL)")
        row = tx.one("SELECT max(version) FROM portal_schema")
        current = 0 if row is None or row[0] is None else int(row[0])
        for version, script in enumerate(MIGRATIONS[current:], start=current + 1):
            for statement in script.split(";"):
                if statement.strip():
                    tx.execute(statement)
            tx.execute("INSERT INTO portal_schema (version) VALUES (?)", (version,))


@dataclass(frozen=True)
class Principal:
    """Who is signed in: a clinic (sees its own devices, exactly as the API) or the operator (every clinic)."""

    role: Literal["clinic", "operator"]
    clinic: str | None = None

    @property
    def scope(self) -> str | None:
        """The clinic every query is limited to; None for the operator (all clinics)."""
        return self.clinic if self.role == "clinic" else None

    @property
    def operator(self) -> bool:
        return self.role == "operator"


@dataclass(frozen=True)
class Session:
    """A live session."""

    principal: Principal
    csrf: str
    expires_ms: int


def _hash(session_id: str) -> str:
    return hashlib.sha256(session_id.encode("utf-8")).hexdigest()


class SessionStore:
    """Sessions in the relay database."""

    def __init__(self, db: Database, registry: Registry, ttl_s: int, clock: Callable[[], int]) -> None:
        self._db = db
        self._registry = registry
        self._ttl_ms = ttl_s * 1000
        self._clock = clock
        migrate_portal(db)

    def sign_in(self, token: str) -> tuple[str, Session]:
        """A new session for ``token`` (an operator or a clinic token): ``(session id for the cookie, session)``.

        :class:`~cloud_relay.errors.Unauthorized` for a token the registry does not know.
        """
        token = token.strip()
        if not token:
            raise Unauthorized("no token given")
        if self._registry.is_admin_token(token):
            principal = Principal("operator")
        else:
            principal = Principal("clinic", self._registry.clinic_for_token(token))
        session_id = secrets.token_urlsafe(32)
        now = self._clock()
        session = Session(principal, new_token(), now + self._ttl_ms)
        with self._db.transaction() as tx:
            tx.execute("DELETE FROM portal_sessions WHERE expires_ms <= ?", (now,))
            tx.execute(
                "INSERT INTO portal_sessions (id_hash, role, clinic, csrf, created_ms, expires_ms)"
                " VALUES (?, ?, ?, ?, ?, ?)",
                (_hash(session_id), principal.role, principal.clinic, session.csrf, now, session.expires_ms),
            )
        return session_id, session

    def get(self, session_id: str | None) -> Session | None:
        """The live session of a cookie value; None when there is none or it expired (then it is deleted)."""
        if not session_id or len(session_id) > 128:
            return None
        with self._db.transaction() as tx:
            row = tx.one(
                "SELECT role, clinic, csrf, expires_ms FROM portal_sessions WHERE id_hash = ?", (_hash(session_id),)
            )
            if row is None:
                return None
            if int(row[3]) <= self._clock():
                tx.execute("DELETE FROM portal_sessions WHERE id_hash = ?", (_hash(session_id),))
                return None
        principal = Principal("operator") if row[0] == "operator" else Principal("clinic", str(row[1]))
        return Session(principal, str(row[2]), int(row[3]))

    def sign_out(self, session_id: str | None) -> None:
        """End the session (nothing happens for an unknown one)."""
        if session_id:
            with self._db.transaction() as tx:
                tx.execute("DELETE FROM portal_sessions WHERE id_hash = ?", (_hash(session_id),))
