"""The pieces of `email.send` that need no server: the relay URL, the Message-ID and the
MIME writer (read back with the stdlib's parser, as a mail client would)."""

from __future__ import annotations

import email
import email.policy
from email.message import EmailMessage
from typing import Any

import pytest

from batchd.worker.handlers.email.message import (
    MessageError,
    NotAllowed,
    Policy,
    Templates,
    build_message,
    message_id_for,
    parse_address,
)
from batchd.worker.handlers.email.mime import mime_message
from batchd.worker.handlers.email.relay import StartTls, parse_relay_url
from batchd.worker.handlers.email.render import (
    RenderLimitExceeded,
    RenderLimits,
    TemplateError,
    is_bounded,
)


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("smtp://mail.example.test", ("mail.example.test", 25, False, StartTls.AUTO)),
        (
            "smtp://MAIL.example.test:2525?starttls=off",
            ("mail.example.test", 2525, False, StartTls.OFF),
        ),
        (
            "smtp://u:p@relay.test:587?starttls=require",
            ("relay.test", 587, False, StartTls.REQUIRE),
        ),
        ("smtps://relay.test", ("relay.test", 465, True, StartTls.AUTO)),
    ],
)
def test_relay_urls(url: str, expected: tuple[str, int, bool, StartTls]) -> None:
    relay = parse_relay_url(url)
    assert (relay.host, relay.port, relay.implicit_tls, relay.starttls) == expected
    assert relay.rate_key == f"smtp:{expected[0]}:{expected[1]}"


def test_relay_credentials_are_decoded_and_never_shown() -> None:
    relay = parse_relay_url("smtp://mail%40shop:p%40ss%3Aw@relay.test")
    assert (relay.username, relay.password) == ("mail@shop", "p@ss:w")
    assert "p@ss" not in repr(relay)
    assert relay.authenticates
    options = relay.client_options()
    assert options["start_tls"] is None  # auto: the pool checks TLS before AUTH
    assert "password" not in options
    assert "username" not in options


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("http://relay.test", "scheme must be smtp or smtps"),
        ("smtp://", "no host"),
        ("smtp://relay.test/path", "no path"),
        ("smtp://relay.test:99999", "port"),
        ("smtp://relay.test?starttls=maybe", "starttls must be auto, require or off"),
        ("smtp://relay.test?tls=1", "unknown option 'tls'"),
        ("smtps://relay.test?starttls=off", "starttls does not apply"),
    ],
)
def test_bad_relay_urls(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        parse_relay_url(url)


def test_message_ids_are_valid_and_distinct() -> None:
    weird = message_id_for("b/..a.b..", "..a.b..")
    assert weird.endswith(".--a-b--@batchd>")
    parsed = email.message_from_bytes(
        f"Message-ID: {weird}\r\n\r\n".encode(), policy=email.policy.default
    )
    assert parsed["Message-ID"] == weird
    assert message_id_for("b/a", "a") != message_id_for("c/a", "a")


def parse(data: bytes) -> EmailMessage:
    message = email.message_from_bytes(data, policy=email.policy.default)
    assert isinstance(message, EmailMessage)
    assert not message.defects
    return message


def test_mime_keeps_any_text_intact() -> None:
    text = "x" * 3000 + "\n.leading dot\r\nwindows line\rold mac\nend with =_ and = and spaces   "
    html = "<p>" + "é" * 2000 + "</p>\n--=_not-a-boundary"
    subject = "Ünïcode " + "word " * 300  # longer than a header line may be
    data = mime_message([("Subject", subject), ("X-Long", "a " * 600)], text, html, "=_b")
    assert all(len(line) <= 998 for line in data.split(b"\r\n"))
    assert data.isascii()
    message = parse(data)
    assert message["Subject"] == subject
    plain, rich = message.iter_parts()
    expected = text.replace("\r\n", "\n").replace("\r", "\n")
    # The parser keeps the wire's CRLF line ends; a mail client shows them as line breaks.
    assert plain.get_content().replace("\r\n", "\n") == expected
    assert rich.get_content().replace("\r\n", "\n") == html


def test_mime_single_parts() -> None:
    assert parse(mime_message([], "hi", None, "=_b")).get_content_type() == "text/plain"
    assert parse(mime_message([], None, "<b>", "=_b")).get_content_type() == "text/html"
    with pytest.raises(ValueError, match="boundary"):
        mime_message([], "a", "b", "plain")


def _params(**overrides: Any) -> dict[str, Any]:
    return {
        "to": "a@example.test",
        "from": "b@example.test",
        "subject": "s",
        "text": "t",
    } | overrides


def test_addresses_with_names_and_international_domains() -> None:
    outgoing = build_message(
        _params(to=["Zoë Ångström <zoe@bücher.example>", "plain@example.test"]),
        message_id_for("b/x", "x"),
        Templates(),
        Policy.of("example.test", ""),
    )
    assert outgoing.recipients == ["zoe@xn--bcher-kva.example", "plain@example.test"]
    message = parse(outgoing.data)
    assert str(message["To"]) == "Zoë Ångström <zoe@xn--bcher-kva.example>, plain@example.test"


@pytest.mark.parametrize(
    "value",
    ["jörg@example.test", "a@b@c", "two words", "a@example.test\r\nBcc: x@example.test", ""],
)
def test_unusable_addresses(value: str) -> None:
    with pytest.raises(MessageError):
        parse_address(value, "to")


def test_policy_from_settings() -> None:
    policy = Policy.of(" Shop.example , bücher.example,", "X-Campaign, x-entity-ref-id")
    assert policy.sender_domains == {"shop.example", "xn--bcher-kva.example"}
    assert policy.custom_headers == {"x-campaign", "x-entity-ref-id"}
    policy.check_sender("news@SHOP.example")
    with pytest.raises(NotAllowed, match="BATCHD_EMAIL_SENDER_DOMAINS"):
        policy.check_sender("news@mail.shop.example")  # exactly the domains listed
    with pytest.raises(NotAllowed, match="BATCHD_EMAIL_SENDER_DOMAINS"):
        Policy.of("", "").check_sender("news@shop.example")  # none listed: none allowed
    policy.check_header("list-unsubscribe")
    policy.check_header("X-CAMPAIGN")
    with pytest.raises(NotAllowed, match="BATCHD_EMAIL_CUSTOM_HEADERS"):
        policy.check_header("X-Spam-Status")
    for name in ("Return-Path", "DKIM-Signature", "Authentication-Results", "Resent-To"):
        with pytest.raises(MessageError, match=f"headers: {name} is not allowed"):
            policy.check_header(name)


@pytest.mark.parametrize(
    ("domains", "headers", "message"),
    [
        ("a..b", "", "BATCHD_EMAIL_SENDER_DOMAINS: invalid domain 'a..b'"),
        ("", "Return-Path", "BATCHD_EMAIL_CUSTOM_HEADERS: 'Return-Path' is not an X- header"),
    ],
)
def test_bad_policy_settings(domains: str, headers: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Policy.of(domains, headers)


BOMBS = [
    (
        "{% for a in range(100000) %}{% for b in range(100000) %}x{% endfor %}{% endfor %}",
        "more than 10000 loop iterations (BATCHD_EMAIL_RENDER_MAX_LOOP)",
    ),
    (
        "{% for a in 'x' * 5000 %}{% for b in 'y' * 5000 %}{% endfor %}{% endfor %}",
        "more than 10000 loop iterations (BATCHD_EMAIL_RENDER_MAX_LOOP)",
    ),
    (
        "{{ 'x' * 100000000 }}",
        "a string or list longer than 1048576 (BATCHD_EMAIL_RENDER_MAX_OUTPUT)",
    ),
    (
        "{% for a in range(9000) %}{{ 'x' * 1000 }}{% endfor %}",
        "output longer than 1048576 characters (BATCHD_EMAIL_RENDER_MAX_OUTPUT)",
    ),
    ("{{ 9 ** 2000000 }}", "an integer beyond 10^18"),
    ("{{ 99999999999 * 99999999999 }}", "an integer beyond 10^18"),
    ("{{ (2 ** 60) * (2 ** 60) }}", "an integer beyond 10^18"),
]


@pytest.mark.parametrize(("source", "expected"), BOMBS)
def test_template_bombs_end_at_a_limit(source: str, expected: str) -> None:
    expected = expected.replace("10^18", f"{10**18} (BATCHD_EMAIL_RENDER_MAX_INT)")
    with pytest.raises(RenderLimitExceeded) as caught:
        Templates().render("text", source, {})
    assert str(caught.value) == f"text template: {expected}"


def test_a_slow_render_ends_at_its_time_limit() -> None:
    slow = "{% for a in range(10000000) %}{{ ('x ' * 100000) | wordcount }}{% endfor %}"
    limits = RenderLimits(seconds=0.05, loop_iterations=10**9)
    with pytest.raises(RenderLimitExceeded) as caught:
        Templates(limits).render("subject", slow, {})
    assert str(caught.value) == (
        "subject template: took longer than 0.05 s (BATCHD_EMAIL_RENDER_TIMEOUT)"
    )


def test_templates_within_the_limits_render_as_usual() -> None:
    source = (
        "{% for x in items %}{{ loop.index }}:{{ x }} {% endfor %}"
        "{{ 2 ** 10 }} {{ 'ab' * 3 }} {{ 7 // 2 }} {{ 7 % 3 }} {{ '%s-%s' % (1, 2) }} "
        "{{ [1] + [2] }} {{ 1.5 * 2 }} {{ 'a' + 'b' }} {{ range(3) | list }}"
    )
    out = Templates().render("text", source, {"items": ["a", "b"]})
    assert out == "1:a 2:b 1024 ababab 3 1 1-2 [1, 2] 3.0 ab [0, 1, 2]"
    # A variable named like the guard is data, not a way around it.
    assert Templates().render("text", "{{ range }}", {"range": 3}) == "3"


def test_templates_are_compiled_once() -> None:
    templates = Templates()
    for i in range(20):
        assert templates.render("text", "Hi {{ n }}", {"n": i}) == f"Hi {i}"
    assert templates._compile is not None
    info = templates._compile["text"].cache_info()  # type: ignore[attr-defined]
    assert (info.misses, info.hits) == (1, 19)


@pytest.mark.parametrize(
    "source",
    [
        "Hello {{ first_name }}",
        "{% if vip is defined and vip %}Dear {{ name | title }}{% else %}Hi{% endif %}",
        "{{ user.name | default('there') | e }} {{ items[0] if items | length > 1 else '' }}",
        "{# a comment #}{% raw %}{{ not a tag }}{% endraw %}",
    ],
)
def test_templates_that_only_substitute_are_bounded(source: str) -> None:
    assert is_bounded(Templates()._environments["text"].parse(source))


@pytest.mark.parametrize(
    "source",
    [
        "{% for x in items %}{{ x }}{% endfor %}",
        "{{ range(3) }}",
        "{{ name ~ name }}",
        "{{ name * 3 }}",
        "{{ name + name }}",
        "{{ 'a' in name }}",
        "{{ name | replace('a', 'b') }}",
        "{{ name | center(1000) }}",
        "{{ x is divisibleby(3) }}",
        "{{ name[1:] }}",
        "{{ [name, name] }}",
        "{% set y = name %}{{ y }}",
        "{% macro m() %}x{% endmacro %}{{ m }}",
        "{% block b %}x{% endblock %}",
    ],
)
def test_templates_that_compute_are_not_bounded(source: str) -> None:
    assert not is_bounded(Templates()._environments["text"].parse(source))


def test_adopted_templates_render_as_their_compiler_does() -> None:
    compiler = Templates()
    adopter = Templates(compiles=False)
    source = "<p>{{ name }}</p>"
    assert compiler.render("html", source, {"name": "<Ann>"}) == "<p>&lt;Ann&gt;</p>"
    code = compiler.bounded_code("html", source)
    assert code is not None
    adopter.adopt("html", source, code)
    assert adopter.render("html", source, {"name": "<Bob>"}) == "<p>&lt;Bob&gt;</p>"
    with pytest.raises(TemplateError, match="'name' is undefined"):
        adopter.render("html", source, {})
    # The adopter's own limits hold, and it compiles nothing itself.
    with pytest.raises(RenderLimitExceeded, match="output longer than"):
        adopter.render("html", source, {"name": "x" * (RenderLimits().output_chars + 1)})
    assert compiler.bounded_code("text", "{% for x in y %}{% endfor %}") is None
    with pytest.raises(TemplateError, match="not adopted"):
        adopter.render("text", "Hi {{ name }}", {"name": "Ann"})
