"""`email.send`: one email message per item, through the worker's SMTP relay.

Needs the `email` extra (`pip install 'batchd[email]'`: aiosmtplib, Jinja2). The handler
is send.py; docs/handlers/email.md is the reference.
"""

from __future__ import annotations

from batchd.worker.handlers.email.send import PARAMS_SCHEMA, EmailSettings, email_send_handler

__all__ = ["PARAMS_SCHEMA", "EmailSettings", "email_send_handler"]
