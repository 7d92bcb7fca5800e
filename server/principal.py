"""Who is calling: the principal an authenticator finds in a call, its role, its tenant.

The server's auth interceptor (batchd.server.auth) authenticates every BatchService call
and leaves the caller's `Principal` in a context variable for the call's handler;
`current()` reads it. With authentication off (`--auth none`) every call is the
`ANONYMOUS` principal: an admin of the one implicit tenant, `DEFAULT_TENANT`, whose
batches keep the ids they always had.
"""

from __future__ import annotations

import enum
from contextvars import ContextVar
from dataclasses import dataclass
from typing import Protocol

from batchd.core.domain import DEFAULT_TENANT, TENANT_PATTERN

__all__ = [
    "ANONYMOUS",
    "DEFAULT_TENANT",
    "METHOD_ROLES",
    "TENANT_PATTERN",
    "Authenticator",
    "Credentials",
    "Principal",
    "Role",
    "current",
    "use",
]


class Role(enum.IntEnum):
    """Each role may do what the ones below it may."""

    READER = 1  # Get, List, ListBatchItems, WatchProgress, ListHandlers, ExportBatchResults,
    #             WatchBatches
    SUBMITTER = 2  # + SubmitBatch, UploadBatch, RetryBatchItems
    OPERATOR = 3  # + Cancel, Pause, Resume, Update, Delete
    ADMIN = 4  # any tenant's batches; key management

    @classmethod
    def parse(cls, name: str) -> Role:
        """A role from its lower-case name (`submitter`); ValueError names the choices."""
        try:
            return cls[name.strip().upper()]
        except KeyError:
            choices = ", ".join(role.name.lower() for role in cls)
            raise ValueError(f"unknown role {name!r} (one of {choices})") from None


# The least role each BatchService method needs.
METHOD_ROLES: dict[str, Role] = {
    "GetBatch": Role.READER,
    "ListBatches": Role.READER,
    "ListBatchItems": Role.READER,
    "WatchProgress": Role.READER,
    "ListHandlers": Role.READER,
    "ExportBatchResults": Role.READER,
    "WatchBatches": Role.READER,
    "SubmitBatch": Role.SUBMITTER,
    "UploadBatch": Role.SUBMITTER,
    "RetryBatchItems": Role.SUBMITTER,
    "CancelBatch": Role.OPERATOR,
    "PauseBatch": Role.OPERATOR,
    "ResumeBatch": Role.OPERATOR,
    "UpdateBatch": Role.OPERATOR,
    "DeleteBatch": Role.OPERATOR,
}


@dataclass(frozen=True)
class Principal:
    """An authenticated caller. `subject`: who (a key's id, a JWT's `sub`, a client
    certificate's name), for audit logs; `tenant`: whose batches it works with."""

    subject: str
    tenant: str
    role: Role

    def may(self, needed: Role) -> bool:
        return self.role >= needed


ANONYMOUS = Principal(subject="anonymous", tenant=DEFAULT_TENANT, role=Role.ADMIN)

_current: ContextVar[Principal] = ContextVar("batchd_principal", default=ANONYMOUS)


def current() -> Principal:
    """The principal of the call being handled (ANONYMOUS when auth is off)."""
    return _current.get()


def use(principal: Principal) -> None:
    """Sets the principal for the rest of the current call (the interceptor's job)."""
    _current.set(principal)


@dataclass(frozen=True)
class Credentials:
    """What a call presents: the bearer token of its `authorization` metadata (after
    "Bearer "), and the identity of its verified client certificate (mTLS), if any."""

    bearer: str | None
    peer_identity: str | None


class Authenticator(Protocol):
    """One way of authenticating (API keys, JWT, mTLS): the caller's principal, or None
    when these credentials do not authenticate by this way (the interceptor then tries
    the next way, and answers UNAUTHENTICATED when none does)."""

    async def authenticate(self, credentials: Credentials) -> Principal | None: ...
