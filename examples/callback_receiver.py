"""A receiver of batchd's completion callbacks: checks each signature, prints the event.

Run it as `python3 examples/callback_receiver.py PORT` with BATCHD_CALLBACK_SECRET set to
the secret the service signs with; it serves until one signed event arrives, answers
204, and exits. An unsigned or badly signed POST gets 401 and the worker tries again.
`verify_batchd_signature` is the code docs/api.md ("Completion callbacks") gives to copy.
"""

import hashlib
import hmac
import json
import os
import sys
import time
from http.server import BaseHTTPRequestHandler, HTTPServer


def verify_batchd_signature(
    secret: bytes, body: bytes, header: str, tolerance: float = 300
) -> bool:
    """True if `header` (the batchd-signature header) signs `body` (the raw request body)
    with `secret`, and was made within `tolerance` seconds of now."""
    try:
        fields = dict(part.split("=", 1) for part in header.split(","))
        timestamp = int(fields["t"])
    except (KeyError, ValueError):
        return False
    if abs(time.time() - timestamp) > tolerance:
        return False
    signed = f"{timestamp}.".encode() + body
    expected = hmac.new(secret, signed, hashlib.sha256).hexdigest()
    return hmac.compare_digest(expected, fields.get("v1", ""))


class Receiver(HTTPServer):
    def __init__(self, port: int, secret: bytes) -> None:
        super().__init__(("127.0.0.1", port), Handler)
        self.secret = secret
        self.received = False


class Handler(BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        signature = self.headers.get("batchd-signature", "")
        if not verify_batchd_signature(self.server.secret, body, signature):
            self.send_response(401)
        else:
            event = json.loads(body)
            data = event["data"]
            print(event["type"], event["subject"], data["state"], json.dumps(data["counts"]))
            self.server.received = True
            self.send_response(204)
        self.end_headers()

    def log_message(self, format: str, *args: object) -> None:
        pass


def main() -> None:
    receiver = Receiver(int(sys.argv[1]), os.environ["BATCHD_CALLBACK_SECRET"].encode())
    while not receiver.received:
        receiver.handle_request()


if __name__ == "__main__":
    main()
