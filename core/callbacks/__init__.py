"""Completion callbacks: a signed CloudEvent POSTed when a batch ends.

The script that ends a batch files its event in an outbox (core/lua/_callbacks.lua), in
the same atomic call; workers claim due events from it (`CallbackOutbox`), POST them
(batchd.worker.callback_delivery) signed with the tenant's secret (`CallbackSecrets`,
`sign`), and retry with back-off until acknowledged or the deadline. See docs/design.md,
"Completion callbacks", and docs/api.md for the receiver's side.
"""

from batchd.core.callbacks.cloudevent import (
    CONTENT_TYPE,
    EVENT_TYPE,
    SIGNATURE_HEADER,
    CallbackEvent,
    sign,
    verify,
)
from batchd.core.callbacks.outbox import CallbackOutbox, ClaimedEvent
from batchd.core.callbacks.secrets import (
    SECRET_SETTING,
    SECRETS_FILE_SETTING,
    CallbackSecrets,
)

__all__ = [
    "CONTENT_TYPE",
    "EVENT_TYPE",
    "SECRETS_FILE_SETTING",
    "SECRET_SETTING",
    "SIGNATURE_HEADER",
    "CallbackEvent",
    "CallbackOutbox",
    "CallbackSecrets",
    "ClaimedEvent",
    "sign",
    "verify",
]
