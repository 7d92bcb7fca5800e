"""Fixtures of the workload handler tests: a real local SMTP server for `email.send`.
The private Redis comes from tests/conftest.py."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from support.smtp import SmtpServer, start_smtp_server


@pytest.fixture
def smtp_server() -> Iterator[SmtpServer]:
    """A fresh recording SMTP server on 127.0.0.1 for one test (tests/support/smtp.py)."""
    server = start_smtp_server()
    try:
        yield server
    finally:
        server.stop()
