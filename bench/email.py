"""`email.send` items to a local SMTP server, beside a bare aiosmtplib script sending the
same messages over the same number of connections.

The SMTP server runs in its own process (`--serve`, `bench.local_server`): aiosmtpd,
taking every message and keeping none. The baseline, in the benchmark's process, opens
`--connections` aiosmtplib connections and sends N messages over them (each connection
one message at a time, as the handler's pool does), the message bytes built with an
f-string: the SMTP exchange alone. batchd runs N `email.send` items — a subject, a text
and an HTML template with per-item variables — in one worker with
BATCHD_SMTP_CONNECTIONS equal to `--connections`: the templates rendered, the MIME
message built and the outcome recorded on top. Beside its items/s, Redis commands per
item (INFO commandstats delta from the upload to the terminal snapshot) and memory per
pending item (the growth of Redis's stored bytes, `bench.service.redis_stored_bytes`,
over a second upload of the same items while the worker is paused, divided by N; that
batch is then cancelled, none of its messages sent).

    .venv/bin/python -m bench.email --items 50000   # a full run
"""

from __future__ import annotations

import argparse
import asyncio
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

import aiosmtplib
from aiosmtpd.smtp import SMTP, Envelope, Session

from batchd.client import AsyncClient
from bench.local_server import local_server
from bench.service import (
    Measured,
    Service,
    report,
    running_service,
    upload_and_measure,
    wait_for_handler,
)

SENDER = "news@shop.test"
SUBJECT = "{{ first_name }}, our winter sale"
TEXT = "Hello {{ first_name }},\n\nEverything is 20% off until Sunday.\n"
HTML = "<p>Hello {{ first_name }},</p><p>Everything is 20% off until Sunday.</p>"


class _Sink:
    """Takes every message, keeps none."""

    async def handle_DATA(self, server: SMTP, session: Session, envelope: Envelope) -> str:
        return "250 2.0.0 Ok"


def serve(port: int) -> None:
    async def main() -> None:
        loop = asyncio.get_running_loop()
        server = await loop.create_server(
            lambda: SMTP(_Sink(), hostname="bench.test", loop=loop), "127.0.0.1", port
        )
        await server.serve_forever()

    asyncio.run(main())


def recipient(i: int) -> str:
    return f"user-{i}@example.test"


def bare_message(i: int) -> bytes:
    """The message an item makes, written directly (same headers and parts, ASCII)."""
    name = f"User {i}"
    boundary = f"=_bench{i}"
    text = TEXT.replace("{{ first_name }}", name).replace("\n", "\r\n")
    html = HTML.replace("{{ first_name }}", name)
    return (
        f"From: News <{SENDER}>\r\nTo: {recipient(i)}\r\n"
        f"Subject: {SUBJECT.replace('{{ first_name }}', name)}\r\n"
        f"Message-ID: <{i}.bench@batchd>\r\nMIME-Version: 1.0\r\n"
        f'Content-Type: multipart/alternative; boundary="{boundary}"\r\n\r\n'
        f'--{boundary}\r\nContent-Type: text/plain; charset="utf-8"\r\n\r\n{text}\r\n'
        f'--{boundary}\r\nContent-Type: text/html; charset="utf-8"\r\n\r\n{html}\r\n'
        f"--{boundary}--\r\n"
    ).encode()


async def bare_messages_per_second(port: int, count: int, connections: int) -> float:
    """`connections` clients, each sending messages until `count` are sent."""
    left = iter(range(count))

    async def loop() -> None:
        smtp = aiosmtplib.SMTP(hostname="127.0.0.1", port=port, start_tls=False)
        await smtp.connect()
        for i in left:
            await smtp.sendmail(SENDER, [recipient(i)], bare_message(i))
        await smtp.quit()

    started = time.perf_counter()
    await asyncio.gather(*(loop() for _ in range(connections)))
    return count / (time.perf_counter() - started)


def items(count: int) -> Iterator[tuple[str, dict[str, Any]]]:
    for i in range(count):
        yield (
            f"user-{i}",
            {
                "to": recipient(i),
                "from": f"News <{SENDER}>",
                "subject": SUBJECT,
                "text": TEXT,
                "html": HTML,
                "vars": {"first_name": f"User {i}"},
            },
        )


async def batchd_run(service: Service, count: int) -> Measured:
    async with AsyncClient(service.target) as client:
        await wait_for_handler(client, "email.send")
        return await upload_and_measure(client, service, "email.send", lambda: items(count), count)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--items", type=int, default=50_000)
    parser.add_argument("--connections", type=int, default=8, help="SMTP connections")
    parser.add_argument("--concurrency", type=int, default=64, help="the worker's")
    parser.add_argument("--serve", type=int, metavar="PORT", help=argparse.SUPPRESS)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args(argv)
    if args.serve:
        serve(args.serve)
        return
    with local_server("bench.email") as server:
        port = server.port
        bare = asyncio.run(bare_messages_per_second(port, args.items, args.connections))
        env = {
            "BATCHD_WORKER_CONCURRENCY": str(args.concurrency),
            "BATCHD_SMTP_URL": f"smtp://127.0.0.1:{port}",
            "BATCHD_SMTP_CONNECTIONS": str(args.connections),
            "BATCHD_EMAIL_SENDER_DOMAINS": SENDER.split("@")[1],
        }
        with running_service(env=env) as service:
            measured = asyncio.run(batchd_run(service, args.items))
    report(
        {
            "items": args.items,
            "connections": args.connections,
            "concurrency": args.concurrency,
            "items_per_second": measured.items_per_second,
            "bare_aiosmtplib_messages_per_second": bare,
            "ratio_to_bare": measured.items_per_second / bare,
            **measured.redis_figures(),
        },
        args.json,
    )


if __name__ == "__main__":
    main()
