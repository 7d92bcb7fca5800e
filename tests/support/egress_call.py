"""`python -m egress_call URL...` (tests/support on PYTHONPATH): `http.request` GETs each
URL in turn, in a process of its own, with the egress settings of the environment
(BATCHD_EGRESS_*), as a worker would; one JSON line per URL: {"output": ...} or
{"code", "message"}.

A process of its own because the CA certificates HTTPS targets are checked against are
the system's, read when aiohttp is imported: a test that trusts its own CA sets
SSL_CERT_FILE for this process alone."""

from __future__ import annotations

import asyncio
import json
import sys

from batchd.core.config import Settings
from batchd.testing import call_handler
from batchd.worker.handler import Code, HandlerError
from batchd.worker.handlers import http_request_handler


async def main(urls: list[str]) -> None:
    settings = Settings.from_env()
    for url in urls:
        try:
            output = await call_handler(
                http_request_handler(), {"url": url, "timeout": 10}, settings=settings
            )
            print(json.dumps({"output": output}), flush=True)
        except HandlerError as error:
            print(json.dumps({"code": Code(error.code).name, "message": error.message}), flush=True)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1:]))
