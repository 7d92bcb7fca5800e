"""`batchd-health`: a container's health check, in the image itself (no extra binary).

    batchd-health                                   the server on 127.0.0.1:50051
    batchd-health --addr HOST:PORT --service liveness [--tls --tls-ca ca.pem ...]
    batchd-health --url http://127.0.0.1:9465/healthz   a worker's listener

Against a server it asks the gRPC health service (grpc.health.v1, as grpc_health_probe
does) for `--service`: "" (the default) is SERVING while the server reaches Redis,
`liveness` while the process answers at all (see docs/operations.md, "Deploying").
Against a URL it wants a 200. Exit status 0 when healthy, 1 otherwise, with one line
saying why; 2 for a usage error.
"""

from __future__ import annotations

import argparse
import sys
import urllib.error
import urllib.request
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

__all__ = ["DEFAULT_ADDR", "TLS", "check_grpc", "check_http", "main"]

DEFAULT_ADDR = "127.0.0.1:50051"
SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass(frozen=True)
class TLS:
    """How the probe's channel trusts the server (`ca_file`, else the system's roots) and,
    for mTLS, proves who it is (`cert_file` and `key_file`); `server_name` is the name
    checked in the server's certificate when it is not the address's host."""

    ca_file: str | None = None
    cert_file: str | None = None
    key_file: str | None = None
    server_name: str | None = None

    def credentials(self) -> grpc.ChannelCredentials:
        """The channel credentials; OSError naming the file that cannot be read."""
        if (self.cert_file is None) != (self.key_file is None):
            raise ValueError("--tls-cert and --tls-key go together (mTLS needs both)")
        return grpc.ssl_channel_credentials(
            _read(self.ca_file), _read(self.key_file), _read(self.cert_file)
        )

    def channel_options(self) -> list[tuple[str, str]]:
        if self.server_name is None:
            return []
        return [("grpc.ssl_target_name_override", self.server_name)]


def _read(path: str | None) -> bytes | None:
    if path is None:
        return None
    with open(path, "rb") as stream:
        return stream.read()


def check_grpc(
    addr: str, service: str = "", *, timeout: float = 5.0, tls: TLS | None = None
) -> str | None:
    """Why the server at `addr` is not healthy for `service`, or None when SERVING."""
    if tls is None:
        channel = grpc.insecure_channel(addr)
    else:
        channel = grpc.secure_channel(addr, tls.credentials(), options=tls.channel_options())
    with channel:
        stub = health_pb2_grpc.HealthStub(channel)
        try:
            request = health_pb2.HealthCheckRequest(service=service)
            reply = stub.Check(request, timeout=timeout)  # type: ignore[attr-defined]
        except grpc.RpcError as exc:
            code: grpc.StatusCode = exc.code()
            if code == grpc.StatusCode.NOT_FOUND:
                return f"{addr}: no health status for service {service!r}"
            if code in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.DEADLINE_EXCEEDED):
                return f"{addr}: unreachable ({code.name}: {exc.details()})"
            return f"{addr}: health check failed ({code.name}: {exc.details()})"
    if reply.status != SERVING:
        name = health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status)
        return f"{addr}: {name}" + (f" (service {service!r})" if service else "")
    return None


def check_http(url: str, *, timeout: float = 5.0) -> str | None:
    """Why `url` is not healthy (not a 200, or no answer), or None."""
    if not url.startswith(("http://", "https://")):
        return f"{url}: not an http(s) URL"
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            status = response.status
    except urllib.error.HTTPError as exc:
        body = exc.read(200).decode("utf-8", "replace").strip()
        return f"{url}: {exc.code}" + (f" {body}" if body else "")
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return f"{url}: unreachable ({reason})"
    return None if status == 200 else f"{url}: {status}"


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="batchd-health",
        description="Health check of a batchd server (gRPC health) or worker (HTTP): "
        "exit 0 when healthy, 1 otherwise.",
    )
    parser.add_argument(
        "--addr", default=None, help=f"the server's gRPC address [default {DEFAULT_ADDR}]"
    )
    parser.add_argument(
        "--service",
        default="",
        help="health service name: '' (Redis reachable), liveness (the process answers)",
    )
    parser.add_argument("--url", default=None, help="check this URL (a worker's /healthz)")
    parser.add_argument("--timeout", type=float, default=5.0, help="seconds [default 5]")
    tls = parser.add_argument_group("TLS (the server's port speaks TLS)")
    tls.add_argument("--tls", action="store_true", help="connect with TLS (system roots)")
    tls.add_argument("--tls-ca", default=None, help="trust only these CA certificates")
    tls.add_argument("--tls-cert", default=None, help="client certificate (mTLS)")
    tls.add_argument("--tls-key", default=None, help="its private key")
    tls.add_argument(
        "--tls-server-name", default=None, help="name to check in the server's certificate"
    )
    return parser


def main(argv: Sequence[str] | None = None) -> None:
    parser = build_parser()
    args = parser.parse_args(argv)
    uses_tls = args.tls or any((args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name))
    if args.url is not None and (args.addr is not None or uses_tls or args.service):
        parser.error("--url checks a worker's HTTP listener: no --addr, --service or --tls*")
    if args.url is not None:
        problem = check_http(args.url, timeout=args.timeout)
        what = args.url
    else:
        addr = args.addr or DEFAULT_ADDR
        if (args.tls_cert is None) != (args.tls_key is None):
            parser.error("--tls-cert and --tls-key go together (mTLS needs both)")
        tls = None
        if uses_tls:
            tls = TLS(args.tls_ca, args.tls_cert, args.tls_key, args.tls_server_name)
        try:
            problem = check_grpc(addr, args.service, timeout=args.timeout, tls=tls)
        except OSError as exc:  # a TLS file that cannot be read
            problem = f"{exc.filename}: cannot read it: {exc.strerror}"
        what = addr + (f" ({args.service})" if args.service else "")
    if problem:
        print(f"unhealthy: {problem}", file=sys.stderr)
        sys.exit(1)
    print(f"healthy: {what}")


if __name__ == "__main__":
    main()
