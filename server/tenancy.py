"""What a caller sees of batches: its tenant's, by the ids it gave them.

A batch of the default tenant is stored under the id it was given, as before tenants
existed; a batch of tenant `acme` under `acme~<id>` (`~` is in no id a caller can give),
and so are its request_id and its `rate_limit_key`: two tenants may use the same ones
without meeting. A caller names its batches by its own ids and never reaches another
tenant's — an id of another tenant's batch is just an id it has no batch under
(NOT_FOUND, no existence oracle). An admin sees every tenant's batches, another tenant's
by its stored id (`acme~<id>`), and may name them so.
"""

from __future__ import annotations

from dataclasses import replace

from batchd.core.domain import DEFAULT_TENANT, TENANT_SEPARATOR, BatchOptions, BatchRecord
from batchd.core.errors import InvalidRequest
from batchd.server import validation
from batchd.server.principal import Principal, Role

__all__ = ["SEPARATOR", "TenantView"]

SEPARATOR = TENANT_SEPARATOR


def stored(tenant: str, name: str) -> str:
    """The stored form of a tenant's batch id, request_id or rate_limit_key."""
    return name if tenant == DEFAULT_TENANT or not name else f"{tenant}{SEPARATOR}{name}"


class TenantView:
    """One caller's view: its ids in, stored ids out, and back."""

    def __init__(self, principal: Principal) -> None:
        self.principal = principal
        self.tenant = principal.tenant
        self._own = f"{self.tenant}{SEPARATOR}"

    @property
    def sees_every_tenant(self) -> bool:
        return self.principal.role >= Role.ADMIN

    def list_scope(self) -> str | None:
        """The tenant whose batches ListBatches shows (None: every tenant's)."""
        return None if self.sees_every_tenant else self.tenant

    def batch_id(self, given: str, field: str = "batch_id") -> str:
        """The stored id of the batch the caller names (INVALID_ARGUMENT for a malformed
        one). An admin may name another tenant's batch by its stored id."""
        if not given:
            raise InvalidRequest.for_field(field, "required")
        if self.sees_every_tenant and SEPARATOR in given:
            tenant, _, name = given.partition(SEPARATOR)
            if validation.ID_PATTERN.fullmatch(name) and tenant:
                return given
        if not validation.ID_PATTERN.fullmatch(given):
            raise InvalidRequest.for_field(field, validation.ID_MESSAGE)
        return stored(self.tenant, given)

    def request_id(self, given: str) -> str:
        return stored(self.tenant, given)

    def options(self, options: BatchOptions) -> BatchOptions:
        """The batch's options as stored: its rate_limit_key in the tenant's space."""
        if not options.rate_limit_key:
            return options
        return replace(options, rate_limit_key=stored(self.tenant, options.rate_limit_key))

    def shown_id(self, name: str) -> str:
        """A stored id, request_id or key as the caller knows it."""
        return name[len(self._own) :] if name.startswith(self._own) else name

    def show(self, batch: BatchRecord) -> BatchRecord:
        """The batch as the caller knows it: its own ids, its own rate_limit_key."""
        if batch.tenant == DEFAULT_TENANT and SEPARATOR not in batch.batch_id:
            return batch
        options = batch.options
        if options.rate_limit_key:
            options = replace(options, rate_limit_key=self.shown_id(options.rate_limit_key))
        return replace(
            batch,
            batch_id=self.shown_id(batch.batch_id),
            request_id=self.shown_id(batch.request_id),
            options=options,
        )
