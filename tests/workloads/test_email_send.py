"""`email.send` against a real local SMTP server (aiosmtpd, tests/support/smtp.py)."""

from __future__ import annotations

import asyncio
import email
import email.policy
import ssl
from collections.abc import AsyncIterator, Awaitable, Callable
from email.message import EmailMessage
from pathlib import Path
from typing import Any

import fastjsonschema
import pytest
import structlog
from support.certs import Certificates, make_certificates
from support.smtp import USER_UNKNOWN, AuthAttempt, SmtpServer, start_smtp_server

from batchd.core.config import SettingError, Settings
from batchd.core.logs import get_logger
from batchd.worker.handler import (
    Code,
    Handler,
    ItemContext,
    PermanentError,
    RetryableError,
    SlowDown,
    WorkerInfo,
)
from batchd.worker.handlers.email import PARAMS_SCHEMA, email_send_handler

Started = Callable[..., Awaitable[Handler]]


@pytest.fixture
async def started() -> AsyncIterator[Started]:
    """Starts `email.send` handlers against a relay URL; shuts them down at the end."""
    handlers: list[Handler] = []

    async def start(url: str, connections: int = 4, **more: Any) -> Handler:
        handler = email_send_handler()
        assert handler.startup is not None
        settings = Settings.of(
            smtp_url=url,
            smtp_connections=connections,
            **{
                "email_sender_domains": "example.test",
                "email_custom_headers": "X-Campaign",
                "email_render_processes": 1,
            }
            | more,
        )
        await handler.startup(WorkerInfo(worker_id="test", concurrency=50, settings=settings))
        handlers.append(handler)
        return handler

    yield start
    for handler in handlers:
        assert handler.shutdown is not None
        await handler.shutdown()


@pytest.fixture
async def handler(started: Started, smtp_server: SmtpServer) -> Handler:
    return await started(smtp_server.url)


def ctx(custom_id: str = "user-1", attempt: int = 1, batch_id: str = "b1") -> ItemContext:
    logger: structlog.typing.FilteringBoundLogger = get_logger("test")
    return ItemContext(batch_id=batch_id, custom_id=custom_id, attempt=attempt, logger=logger)


def params(**overrides: Any) -> dict[str, Any]:
    base: dict[str, Any] = {
        "to": "ann@example.test",
        "from": "Shop <shop@example.test>",
        "subject": "Hello {{ name }}",
        "text": "Hi {{ name }}, 5 < 6",
        "vars": {"name": "Ann"},
    }
    return {**base, **overrides}


async def send(handler: Handler, item: ItemContext | None = None, **overrides: Any) -> Any:
    return dict(await handler.run(params(**overrides), item or ctx()))


def parsed(smtp_server: SmtpServer, index: int = -1) -> EmailMessage:
    message = email.message_from_bytes(
        smtp_server.handler.messages[index].content, policy=email.policy.default
    )
    assert isinstance(message, EmailMessage)
    return message


@pytest.mark.slow
async def test_text_and_html_become_multipart_alternative(
    handler: Handler, smtp_server: SmtpServer
) -> None:
    out = await send(
        handler,
        to=["Ann <ann@example.test>", "bob@example.test"],
        reply_to="help@example.test",
        headers={"List-Unsubscribe": "<https://example.test/u/1>", "x-campaign": "winter"},
        html="<p>Hi {{ name }}</p>",
        vars={"name": "<Ann & co>"},
    )
    assert out["accepted"] == ["ann@example.test", "bob@example.test"]
    assert out["rejected"] == {}
    assert out["reply"].startswith("250 2.0.0 Ok: queued as Q")
    received = smtp_server.handler.messages[-1]
    assert received.recipients == ("ann@example.test", "bob@example.test")
    assert received.sender == "shop@example.test"
    assert received.message_id == out["message_id"]
    message = parsed(smtp_server)
    assert message.get_content_type() == "multipart/alternative"
    assert message["Subject"] == "Hello <Ann & co>"  # a subject is not HTML: no escaping
    assert message["To"] == "Ann <ann@example.test>, bob@example.test"
    assert message["Reply-To"] == "help@example.test"
    assert message["List-Unsubscribe"] == "<https://example.test/u/1>"
    assert message["X-Campaign"] == "winter"
    text, html = message.iter_parts()
    assert text.get_content_type() == "text/plain"
    assert text.get_content().strip() == "Hi <Ann & co>, 5 < 6"
    assert html.get_content_type() == "text/html"
    assert html.get_content().strip() == "<p>Hi &lt;Ann &amp; co&gt;</p>"


async def test_single_parts_and_non_ascii(handler: Handler, smtp_server: SmtpServer) -> None:
    del_text = params(html="<b>{{ name }}</b>")
    del del_text["text"]
    await handler.run(del_text, ctx("html-only"))
    assert parsed(smtp_server).get_content_type() == "text/html"
    await send(handler, ctx("text-only"), subject="Grüße {{ name }}", vars={"name": "Zoë"})
    message = parsed(smtp_server)
    assert message.get_content_type() == "text/plain"
    assert message["Subject"] == "Grüße Zoë"
    assert message.get_content().strip() == "Hi Zoë, 5 < 6"


async def test_message_id_is_the_same_on_every_attempt(
    handler: Handler, smtp_server: SmtpServer
) -> None:
    first = await send(handler, ctx("user.1", attempt=1))
    again = await send(handler, ctx("user.1", attempt=2))
    other = await send(handler, ctx("user-1", attempt=1))
    other_batch = await send(handler, ctx("user.1", batch_id="b2"))
    assert first["message_id"] == again["message_id"]
    assert len({first["message_id"], other["message_id"], other_batch["message_id"]}) == 3
    assert first["message_id"].startswith("<")
    assert first["message_id"].endswith(".user-1@batchd>")
    ids = [m.message_id for m in smtp_server.handler.messages]
    assert ids == [first["message_id"], first["message_id"], other["message_id"], ids[3]]


async def test_rejected_recipient_fails_permanently_with_the_reply(
    handler: Handler, smtp_server: SmtpServer
) -> None:
    smtp_server.handler.reject.add("gone@example.test")
    with pytest.raises(PermanentError) as caught:
        await send(handler, to="gone@example.test")
    assert caught.value.code == Code.FAILED_PRECONDITION
    assert caught.value.message == f"RCPT TO refused: <gone@example.test>: {USER_UNKNOWN}"
    assert smtp_server.handler.messages == []
    await send(handler)  # the connection was reset and serves the next message
    assert smtp_server.handler.connections == 1


async def test_some_recipients_rejected_still_succeeds(
    handler: Handler, smtp_server: SmtpServer
) -> None:
    smtp_server.handler.reject.add("gone@example.test")
    out = await send(handler, to=["ann@example.test", "gone@example.test"])
    assert out["accepted"] == ["ann@example.test"]
    assert out["rejected"] == {"gone@example.test": USER_UNKNOWN}
    assert smtp_server.handler.messages[-1].recipients == ("ann@example.test",)


async def test_temporary_refusal_is_retried_and_nothing_is_sent_before(
    handler: Handler, smtp_server: SmtpServer
) -> None:
    smtp_server.handler.script_rcpt("bob@example.test", "451 4.3.0 Try again later", times=1)
    with pytest.raises(RetryableError) as caught:
        # Ann is accepted, Bob only later: nobody gets the message until both can.
        await send(handler, ctx(attempt=1), to=["ann@example.test", "bob@example.test"])
    assert not isinstance(caught.value, SlowDown)
    assert caught.value.code == Code.UNAVAILABLE
    assert "451 4.3.0 Try again later" in caught.value.message
    assert smtp_server.handler.messages == []
    out = await send(handler, ctx(attempt=2), to=["ann@example.test", "bob@example.test"])
    assert out["accepted"] == ["ann@example.test", "bob@example.test"]
    assert len(smtp_server.handler.messages) == 1


@pytest.mark.parametrize(
    ("stage", "reply", "error", "code"),
    [
        ("mail", "421 4.7.0 Too many connections", SlowDown, Code.UNAVAILABLE),
        ("rcpt", "452 4.5.3 Too many recipients", SlowDown, Code.RESOURCE_EXHAUSTED),
        ("rcpt", "450 4.2.0 Mailbox busy", RetryableError, Code.UNAVAILABLE),
        ("data", "451 4.3.0 Local error", RetryableError, Code.UNAVAILABLE),
        ("mail", "553 5.1.8 Sender address rejected", PermanentError, Code.INVALID_ARGUMENT),
        ("data", "554 5.6.0 Message rejected", PermanentError, Code.FAILED_PRECONDITION),
    ],
)
async def test_replies_map_to_the_item_fate(
    handler: Handler,
    smtp_server: SmtpServer,
    stage: str,
    reply: str,
    error: type[Exception],
    code: Code,
) -> None:
    recorder = smtp_server.handler
    if stage == "mail":
        recorder.mail_replies.append(reply)
    elif stage == "rcpt":
        recorder.script_rcpt("ann@example.test", reply)
    else:
        recorder.data_replies.append(reply)
    with pytest.raises(error) as caught:
        await send(handler)
    assert type(caught.value) is error
    assert caught.value.code == code  # type: ignore[attr-defined]
    assert reply in caught.value.message  # type: ignore[attr-defined]
    await send(handler)  # after a 421 the connection is dropped, otherwise reset
    assert recorder.connections == (2 if reply.startswith("421") else 1)


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"subject": "Hi {{ first_name }}"}, "subject template: 'first_name' is undefined"),
        (
            {"text": "{{ user.name }}", "vars": {"name": "A", "user": {}}},
            "text template: 'dict object' has no attribute 'name'",
        ),
        ({"text": "{% if %}"}, "text template, line 1: "),
        ({"text": "{{ ''.__class__.__mro__ }}"}, "text template: "),
        ({"subject": "a\n{{ name }}"}, "subject template: the subject must be one line"),
        ({"to": "not an address"}, "to: not one email address"),
        ({"to": "a@b.test, c@d.test"}, "to: not one email address"),
        ({"headers": {"Subject": "x"}}, "headers: Subject is set from the params"),
        ({"headers": {"Return-Path": "<a@evil.test>"}}, "headers: Return-Path is not allowed"),
        ({"headers": {"DKIM-Signature": "v=1"}}, "headers: DKIM-Signature is not allowed"),
    ],
)
async def test_bad_params_fail_with_invalid_argument(
    handler: Handler, smtp_server: SmtpServer, overrides: dict[str, Any], expected: str
) -> None:
    with pytest.raises(PermanentError) as caught:
        await send(handler, **overrides)
    assert caught.value.code == Code.INVALID_ARGUMENT
    assert caught.value.message.startswith(expected)
    assert smtp_server.handler.messages == []


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"from": "a@example.org"}, "from: the domain example.org is not in the worker's "),
        ({"from": "a@mail.example.test"}, "from: the domain mail.example.test is not in "),
        ({"headers": {"X-Spam-Status": "No"}}, "headers: X-Spam-Status is not in the worker's "),
    ],
)
async def test_what_the_worker_does_not_allow_is_permission_denied(
    handler: Handler, smtp_server: SmtpServer, overrides: dict[str, Any], expected: str
) -> None:
    with pytest.raises(PermanentError) as caught:
        await send(handler, **overrides)
    assert caught.value.code == Code.PERMISSION_DENIED
    assert caught.value.message.startswith(expected)
    assert smtp_server.handler.connections == 0  # refused before the relay hears of it


async def test_no_sender_domains_no_email(started: Started, smtp_server: SmtpServer) -> None:
    handler = await started(smtp_server.url, email_sender_domains="")
    with pytest.raises(PermanentError) as caught:
        await send(handler)
    assert caught.value.code == Code.PERMISSION_DENIED
    assert "BATCHD_EMAIL_SENDER_DOMAINS" in caught.value.message


async def test_bad_policy_settings_stop_the_worker_at_startup() -> None:
    handler = email_send_handler()
    assert handler.startup is not None
    settings = Settings.of(email_custom_headers="Received")
    with pytest.raises(SettingError, match="BATCHD_EMAIL_CUSTOM_HEADERS"):
        await handler.startup(WorkerInfo(worker_id="t", concurrency=1, settings=settings))


async def test_connections_are_reused_and_bounded(
    started: Started, smtp_server: SmtpServer
) -> None:
    handler = await started(smtp_server.url, connections=3)
    outs = await asyncio.gather(*(send(handler, ctx(f"u{i}")) for i in range(60)))
    assert len({out["message_id"] for out in outs}) == 60
    assert len(smtp_server.handler.messages) == 60
    assert 1 <= smtp_server.handler.connections <= 3


async def test_a_dropped_connection_is_replaced(handler: Handler, smtp_server: SmtpServer) -> None:
    await send(handler, ctx("before"))
    smtp_server.hang_up()  # as a relay's idle timeout would
    await send(handler, ctx("after"))
    assert len(smtp_server.handler.messages) == 2
    assert smtp_server.handler.connections == 2


async def test_unreachable_relay_is_retryable(started: Started, free_port: int) -> None:
    handler = await started(f"smtp://127.0.0.1:{free_port}")
    with pytest.raises(RetryableError) as caught:
        await send(handler)
    assert caught.value.code == Code.UNAVAILABLE
    assert f"127.0.0.1:{free_port}" in caught.value.message


async def test_starttls_required_but_not_offered_fails(
    started: Started, smtp_server: SmtpServer
) -> None:
    handler = await started(f"{smtp_server.url}?starttls=require")
    with pytest.raises(PermanentError) as caught:
        await send(handler)
    assert caught.value.code == Code.FAILED_PRECONDITION
    assert "STARTTLS" in caught.value.message
    assert smtp_server.handler.messages == []


@pytest.fixture
def trusted_certificates(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Certificates:
    """A CA the client trusts (OpenSSL's SSL_CERT_FILE) and a certificate for 127.0.0.1."""
    certificates = make_certificates(tmp_path)
    monkeypatch.setenv("SSL_CERT_FILE", str(certificates.ca.cert))
    return certificates


async def test_credentials_go_over_starttls(
    started: Started, trusted_certificates: Certificates
) -> None:
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    server_cert = trusted_certificates.server
    context.load_cert_chain(server_cert.cert, server_cert.key)
    server = start_smtp_server(credentials=("mailer", "p@ss:word"), tls_context=context)
    try:
        port = server.port
        good = await started(f"smtp://mailer:p%40ss%3Aword@127.0.0.1:{port}")
        await send(good)
        assert len(server.handler.messages) == 1
        assert server.handler.auth_attempts == [AuthAttempt("mailer", encrypted=True)]
        bad = await started(f"smtp://mailer:wrong@127.0.0.1:{port}?starttls=require")
        with pytest.raises(PermanentError) as caught:
            await send(bad)
        assert caught.value.code == Code.UNAUTHENTICATED
        assert "535" in caught.value.message
        anonymous = await started(f"smtp://127.0.0.1:{port}")
        with pytest.raises(PermanentError) as caught:
            await send(anonymous)
        assert caught.value.code == Code.UNAUTHENTICATED
        assert "530" in caught.value.message
    finally:
        server.stop()


# A relay that takes AUTH in the clear is what this test needs: the client must not use it.
@pytest.mark.filterwarnings("ignore:Requiring AUTH while not requiring TLS:UserWarning")
async def test_no_auth_in_the_clear_when_the_relay_offers_no_starttls(started: Started) -> None:
    server = start_smtp_server(credentials=("mailer", "secret"), auth_require_tls=False)
    try:
        handler = await started(f"smtp://mailer:secret@127.0.0.1:{server.port}")
        with pytest.raises(PermanentError) as caught:
            await send(handler)
        assert caught.value.code == Code.FAILED_PRECONDITION
        assert caught.value.message == (
            f"SMTP relay 127.0.0.1:{server.port} offers no STARTTLS: the user and password "
            "of BATCHD_SMTP_URL are never sent in the clear"
        )
        assert server.handler.connections == 1  # it did connect and greet
        assert server.handler.auth_attempts == []
        assert server.handler.messages == []
    finally:
        server.stop()


async def test_credentials_without_tls_stop_the_worker_at_startup() -> None:
    handler = email_send_handler()
    assert handler.startup is not None
    settings = Settings.of(smtp_url="smtp://mailer:secret@relay.test:25?starttls=off")
    with pytest.raises(SettingError) as caught:
        await handler.startup(WorkerInfo(worker_id="t", concurrency=1, settings=settings))
    assert str(caught.value).startswith("BATCHD_SMTP_URL: ")
    assert "starttls=off" in str(caught.value)
    assert "secret" not in str(caught.value)


async def test_rate_key_is_the_relay(started: Started, smtp_server: SmtpServer) -> None:
    assert email_send_handler().rate_key is not None
    assert email_send_handler().rate_key(params()) is None  # type: ignore[misc]
    handler = await started(smtp_server.url)
    assert handler.rate_key is not None
    assert handler.rate_key(params()) == f"smtp:127.0.0.1:{smtp_server.port}"


async def test_bad_relay_url_stops_the_worker_at_startup() -> None:
    handler = email_send_handler()
    assert handler.startup is not None
    settings = Settings.of(smtp_url="http://mail.example.test")
    with pytest.raises(ValueError, match="smtp or smtps"):
        await handler.startup(WorkerInfo(worker_id="t", concurrency=1, settings=settings))


async def test_run_before_startup_is_an_error() -> None:
    with pytest.raises(RuntimeError, match="startup"):
        await email_send_handler().run(params(), ctx())


_validate = fastjsonschema.compile(PARAMS_SCHEMA)


@pytest.mark.parametrize(
    "bad",
    [
        {"to": "a@example.test", "from": "b@example.test", "subject": "s"},  # no text, no html
        {**params(), "password": "x"},  # additionalProperties: false
        {**params(), "to": []},
        {**params(), "to": [f"u{i}@example.test" for i in range(51)]},
        {**params(), "to": "nobody"},
        {**params(), "from": "a@example.test\r\nBcc: all@example.test"},
        {**params(), "headers": {"X-A": "1\r\nBcc: all@example.test"}},
        {**params(), "headers": {"Bad Name": "1"}},
        {**params(), "headers": {"Return-Path": "<bounce@evil.test>"}},
        {**params(), "headers": {"DKIM-Signature": "v=1; d=bank.test"}},
        {**params(), "headers": {"Authentication-Results": "mx; dkim=pass"}},
        {**params(), "headers": {"Resent-To": "x@example.test"}},
        {**params(), "headers": {"Received": "from trusted"}},
        {**params(), "headers": {"X-": "1"}},
        {**params(), "vars": []},
    ],
)
def test_schema_refuses_bad_params_at_submit(bad: dict[str, Any]) -> None:
    with pytest.raises(fastjsonschema.JsonSchemaException):
        _validate(bad)


def test_schema_accepts_good_params() -> None:
    _validate(params())
    _validate({**params(), "to": ["a@example.test", "B <b@example.test>"], "html": "<p/>"})
    headers = {"list-unsubscribe": "<u>", "List-Unsubscribe-Post": "x", "X-Campaign": "w"}
    _validate({**params(), "headers": headers})
