"""Settings: one frozen object per process, built from flags and BATCHD_* variables.

Precedence: command-line flag, then environment variable, then default. Nothing else
in batchd reads the environment; the settings are passed down explicitly.

`Settings` is flat: every process gets the same object type, and each field's metadata
says which parts read it (`read_by`: the server, the worker, the embedded Redis). A
command offers the flags of the parts it runs (`COMMANDS`): `batchd-server` the server's,
`batchd-worker` the worker's, `batchd-service` the union. A handler declares its own
settings next to its code, as a frozen dataclass of `setting(...)` fields named on the
`Handler`; the worker collects those of the handlers it loads, offers them as flags and
BATCHD_* variables like its own, and keeps their values in `Settings.handler_settings`,
from which `Settings.section(cls)` builds the handler's typed object. See docs/design.md,
"Settings and processes".
"""

from __future__ import annotations

import argparse
import dataclasses
import difflib
import os
from collections.abc import Collection, Iterable, Mapping, Sequence
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any, TypeVar

from batchd.core.events import DEFAULT_EVENTS_RETAIN
from batchd.core.upload import STAGED_ITEM_OVERHEAD, Limits

__all__ = [
    "COMMANDS",
    "DEFAULT_CHUNK_SIZE",
    "DEFAULT_RETENTION",
    "EMBEDDED",
    "MIN_CHUNK_JOBS",
    "SERVER",
    "WORKER",
    "SettingError",
    "Settings",
    "setting",
]

T = TypeVar("T")

# The parts of batchd that read settings.
SERVER = "server"
WORKER = "worker"
EMBEDDED = "embedded"  # the Redis batchd-service starts when given no URL
SHARED = frozenset({SERVER, WORKER})

# What each command runs, hence the settings it takes.
COMMANDS: Mapping[str, frozenset[str]] = {
    "batchd-server": frozenset({SERVER}),
    "batchd-worker": frozenset({WORKER}),
    "batchd-service": frozenset({SERVER, WORKER, EMBEDDED}),
}

# BATCHD_* variables read by other programs: the CLI's server address and TLS files.
OTHER_VARIABLES = frozenset(
    {
        "BATCHD_TARGET",
        "BATCHD_TOKEN",
        "BATCHD_TLS",
        "BATCHD_TLS_CA",
        "BATCHD_TLS_CERT",
        "BATCHD_TLS_KEY",
    }
)

# Chunk jobs a worker runs at once at least, when worker_max_chunks leaves it to batchd.
MIN_CHUNK_JOBS = 8

# Defaults of the settings that BatchStore also takes directly (tests build stores
# without Settings); the admission limits' defaults are Limits'.
DEFAULT_RETENTION = 7 * 86400.0  # a week
DEFAULT_CHUNK_SIZE = 100
_LIMITS = Limits()


class SettingError(ValueError):
    """A setting's value or declaration is wrong; the message names it."""


def setting(default: Any, help: str, *, read_by: str | Collection[str] = WORKER) -> Any:
    """A settings field: its default, its help line, and which parts read it (for a
    handler's settings, always the worker)."""
    parts = frozenset({read_by} if isinstance(read_by, str) else read_by)
    return field(default=default, metadata={"help": help, "read_by": parts})


@dataclass(frozen=True)
class Settings:
    redis_url: str = setting(
        "",
        "Redis URL (also REDIS_URL), or redis+sentinel://host:26379,host2:26379/service/0 "
        "to follow a Sentinel-managed primary; empty: batchd-service starts an embedded "
        "server",
        read_by=SHARED,
    )
    redis_min_replicas_ack: int = setting(
        0,
        "replicas that must acknowledge a new batch (Redis WAIT) before SubmitBatch and "
        "UploadBatch answer, so that losing the primary cannot lose it; 0: answer at once",
        read_by=SERVER,
    )
    redis_replica_ack_timeout: float = setting(
        1.0,
        "seconds to wait for those acknowledgements; short of them the call fails "
        "UNAVAILABLE, its batch kept (a retry with the same request_id asks again)",
        read_by=SERVER,
    )
    redis_timeout: float = setting(
        5.0,
        "seconds a Redis command waits for its reply before it fails: a silent network "
        "partition turns into an error, not a hang; 0: no limit",
        read_by=SHARED,
    )
    key_prefix: str = setting("batchd:", "prefix of every Redis key batchd writes", read_by=SHARED)
    host: str = setting(
        "127.0.0.1",
        "address the gRPC server listens on; a non-loopback one needs --auth (or --insecure)",
        read_by=SERVER,
    )
    port: int = setting(50051, "port the gRPC server listens on", read_by=SERVER)
    metrics_host: str = setting(
        "127.0.0.1",
        "address the HTTP listeners for Prometheus (/metrics) bind, the server's and the "
        "workers': loopback unless asked, as /metrics answers without authentication",
        read_by=SHARED,
    )
    metrics_port: int = setting(
        9464,
        "port of the server's HTTP listener (/metrics, and the dashboard at /dashboard/); 0: none",
        read_by=SERVER,
    )
    worker_metrics_port: int = setting(
        0,
        "port of the worker's HTTP listener (/metrics); 0: none. Each worker on a host "
        "needs its own (9465, 9466, ...): a port in use stops the worker at start",
        read_by=WORKER,
    )
    tls_cert_file: str = setting(
        "",
        "PEM certificate (chain) the gRPC server presents; with tls_key_file, the port "
        "speaks TLS only. Empty: plaintext",
        read_by=SERVER,
    )
    tls_key_file: str = setting(
        "", "PEM private key of tls_cert_file (unencrypted)", read_by=SERVER
    )
    tls_client_ca_file: str = setting(
        "",
        "PEM CA certificates: every client must present a certificate signed by one (mTLS); "
        "needs tls_cert_file",
        read_by=SERVER,
    )
    grpc_keepalive_time: float = setting(
        60.0,
        "seconds of silence on a connection before the server pings the client, to find "
        "dead peers and keep middleboxes from dropping quiet watches",
        read_by=SERVER,
    )
    grpc_keepalive_timeout: float = setting(
        20.0, "seconds the server waits for a ping's answer before closing", read_by=SERVER
    )
    grpc_max_connection_age: float = setting(
        1800.0,
        "seconds after which the server asks a client to reconnect, so that clients spread "
        "over replicas added since (each age is jittered by 10%); 0: never",
        read_by=SERVER,
    )
    grpc_max_connection_age_grace: float = setting(
        300.0,
        "seconds calls in flight on such a connection get to finish; a watch cut then "
        "reconnects on its own; 0: as long as they take",
        read_by=SERVER,
    )
    grpc_max_connection_idle: float = setting(
        900.0,
        "seconds without calls after which a connection is closed; 0: never",
        read_by=SERVER,
    )
    grpc_max_concurrent_streams: int = setting(
        1000,
        "calls one client connection may have open at once (HTTP/2 streams; a client opens "
        "more connections or waits beyond it)",
        read_by=SERVER,
    )
    grpc_max_concurrent_calls: int = setting(
        20_000,
        "calls the server has open at once, over all connections (RESOURCE_EXHAUSTED "
        "beyond; health checks always answered); 0: no limit",
        read_by=SERVER,
    )
    drain_delay: float = setting(
        1.0,
        "seconds a server told to stop (SIGTERM) goes on answering after it reports "
        "NOT_SERVING, before it refuses new calls: time for health-checking clients and "
        "load balancers to send their calls elsewhere",
        read_by=SERVER,
    )
    data_dir: str = setting(
        ".data",
        "where the embedded Redis keeps its append-only file, its socket (redis/valkey.sock) "
        "and its password (redis/password; its URL with it: redis/url)",
        read_by=EMBEDDED,
    )
    worker_concurrency: int = setting(100, "items in flight per worker process", read_by=WORKER)
    worker_max_chunks: int = setting(
        0,
        "chunk jobs in flight per worker process; 0: three chunks of the default size per "
        "worker_concurrency's worth of items, and at least 8",
        read_by=WORKER,
    )
    worker_poll_interval: float = setting(
        0.05, "seconds a worker waits between looks at the queue when it has room", read_by=WORKER
    )
    worker_event_loop: str = setting(
        "auto",
        "the worker's event loop: uvloop, asyncio (the standard library's), or auto "
        "(uvloop where it is installed: every platform but Windows)",
        read_by=WORKER,
    )
    handlers: str = setting(
        "", "extra handlers to serve: comma-separated module:attribute", read_by=WORKER
    )
    egress_allow: str = setting(
        "",
        "destinations handlers may reach on an item's behalf although the egress guard "
        "refuses them (loopback, private, link-local, CGNAT, multicast, reserved...): "
        "comma-separated CIDRs (10.1.0.0/16) and host[:port] (localhost:8080)",
        read_by=WORKER,
    )
    egress_proxy: str = setting(
        "",
        "http:// proxy that handlers' outbound HTTP(S) goes through; the guard still checks "
        "each target's address, the proxy's own policy applies to what it dials",
        read_by=WORKER,
    )
    egress_nameservers: str = setting(
        "",
        "DNS servers (ip[:port], comma-separated) the egress guard resolves names with; "
        "empty: the system's resolver",
        read_by=WORKER,
    )
    callback_secret: str = setting(
        "",
        "the default tenant's signing secret for completion callbacks (batches submitted "
        "without --auth), at least 16 characters; empty: such batches may not ask for one",
        read_by=SHARED,
    )
    callback_secrets_file: str = setting(
        "",
        'JSON file of each tenant\'s callback signing secret: {"acme": "<secret>"}; a batch asking '
        "for a callback is refused (FAILED_PRECONDITION) when its tenant has none",
        read_by=SHARED,
    )
    callback_allow_http: bool = setting(
        False,
        "accept http:// completion-callback URLs (https only otherwise): for tests and "
        "loopback receivers; the egress guard still applies",
        read_by=SERVER,
    )
    callback_deadline: float = setting(
        86400.0,
        "seconds after a batch ends that its callback is retried; then it is dropped "
        "(logged and counted)",
        read_by=WORKER,
    )
    callback_timeout: float = setting(
        10.0,
        "seconds one callback POST may take; a worker holds an event 1.5 times this plus "
        "1 s before another may deliver it again",
        read_by=WORKER,
    )
    callback_retry_delay: float = setting(
        2.0,
        "seconds before the first retry of a failed callback; each retry waits twice the "
        "last (with jitter), at most 10 minutes",
        read_by=WORKER,
    )
    heartbeat_interval: float = setting(
        2.0, "seconds between a worker's liveness reports", read_by=WORKER
    )
    worker_ttl: float = setting(
        10.0, "a worker silent this many seconds counts as gone", read_by=SHARED
    )
    lease_ttl: float = setting(
        5.0,
        "seconds a worker's claim on a chunk lasts unrenewed: a dead worker's chunk is "
        "picked up again after this",
        read_by=WORKER,
    )
    maintenance_interval: float = setting(
        1.0, "seconds between sweeps for expired leases and completion windows", read_by=SHARED
    )
    retention: float = setting(
        DEFAULT_RETENTION, "seconds a finished batch and its outcomes are kept", read_by=SHARED
    )
    events_retain: int = setting(
        DEFAULT_EVENTS_RETAIN,
        "batch events (WatchBatches) each tenant's stream keeps, roughly (trimmed in "
        "blocks): a cursor older than that is refused; 0: no events are written",
        read_by=SHARED,
    )
    default_completion_window: float = setting(
        86400.0,
        "seconds a batch may take when it does not say; then unfinished items EXPIRE",
        read_by=SERVER,
    )
    default_chunk_size: int = setting(
        DEFAULT_CHUNK_SIZE, "items per chunk when neither batch nor handler say", read_by=SHARED
    )
    outcome_flush_items: int = setting(
        1000, "a worker records outcomes every N items ...", read_by=WORKER
    )
    outcome_flush_interval: float = setting(0.1, "... or every this many seconds", read_by=WORKER)
    max_pending_items: int = setting(
        _LIMITS.max_pending_items,
        "items not yet finished, across all batches, beyond which submits are refused "
        "(RESOURCE_EXHAUSTED)",
        read_by=SERVER,
    )
    max_batch_items: int = setting(
        _LIMITS.max_batch_items, "items one batch may hold", read_by=SERVER
    )
    tenant_max_pending_items: int = setting(
        _LIMITS.tenant_max_pending_items,
        "items not yet finished one tenant may have across its batches (0: only the "
        "service-wide limit)",
        read_by=SERVER,
    )
    tenant_max_open_batches: int = setting(
        _LIMITS.tenant_max_open_batches,
        "unfinished batches one tenant may have (0: no limit)",
        read_by=SERVER,
    )
    tenant_max_items_per_second: float = setting(
        _LIMITS.tenant_max_items_per_second,
        "items one tenant may submit per second, with bursts of ten seconds' worth (0: no limit)",
        read_by=SERVER,
    )
    tenant_max_watchers: int = setting(
        5000,
        "WatchProgress and WatchBatches streams one tenant may have open at once, across all "
        "servers on "
        "the Redis (RESOURCE_EXHAUSTED beyond; admins are not held to it); 0: no limit",
        read_by=SERVER,
    )
    server_ttl: float = setting(
        15.0,
        "a server silent this many seconds counts as gone: its WatchProgress streams stop "
        "counting toward tenant_max_watchers",
        read_by=SERVER,
    )
    max_params_depth: int = setting(
        32,
        "levels of objects and arrays an item's params may nest (INVALID_ARGUMENT beyond)",
        read_by=SERVER,
    )
    max_params_bytes: int = setting(
        256 * 1024,
        "bytes of one item's params, as JSON or as a Struct (INVALID_ARGUMENT beyond)",
        read_by=SERVER,
    )
    max_upload_message_items: int = setting(
        10_000, "items one UploadBatch message may carry (INVALID_ARGUMENT beyond)", read_by=SERVER
    )
    upload_idle_timeout: float = setting(
        60.0,
        "seconds an UploadBatch stream may send nothing before it is ended "
        "(DEADLINE_EXCEEDED) and its staged items dropped; twice this is the lease of an "
        "upload that starts early (its batch is cancelled once its server is gone that long)",
        read_by=SERVER,
    )
    max_upload_duration: float = setting(
        3600.0,
        "seconds an UploadBatch stream may last before it is ended (DEADLINE_EXCEEDED) "
        "and its staged items dropped",
        read_by=SERVER,
    )
    watch_min_interval: float = setting(
        1.0,
        "seconds at least between two WatchProgress snapshots, whatever a watcher asks "
        "(min_interval); the terminal snapshot is sent at once",
        read_by=SERVER,
    )
    watch_min_heartbeat: float = setting(
        1.0,
        "seconds at least between two WatchProgress heartbeats, whatever a watcher asks "
        "(heartbeat_interval)",
        read_by=SERVER,
    )
    max_upload_bytes: int = setting(
        _LIMITS.max_upload_bytes,
        "bytes one upload may stage before it commits: each item's params, twice its "
        f"custom_id and {STAGED_ITEM_OVERHEAD} (RESOURCE_EXHAUSTED beyond)",
        read_by=SERVER,
    )
    max_staged_bytes: int = setting(
        2 * 1024 * 1024 * 1024,
        "bytes all uploads not yet committed may stage together, across every server on "
        "the Redis, counted as for max_upload_bytes (RESOURCE_EXHAUSTED beyond); 0: no limit",
        read_by=SERVER,
    )
    tenant_max_staged_bytes: int = setting(
        0,
        "bytes one tenant's uploads not yet committed may stage together (0: only the "
        "service-wide limit)",
        read_by=SERVER,
    )
    dispatch_window: int = setting(
        _LIMITS.window,
        "chunk jobs of each batch kept in the queue at once: a batch behind another "
        "waits for at most this many of its chunks",
        read_by=SERVER,
    )
    gc_threshold: int = setting(
        10_000,
        "allocations between collections of Python's youngest garbage-collector generation "
        "in batchd's processes (the interpreter's default: 700), raised by a server to ten "
        "per open watch stream where that is more; 0 leaves it as it is",
        read_by=SHARED,
    )
    auth: str = setting(
        "none",
        "how callers authenticate: none, or a comma-separated list of tokens (API keys), "
        "jwt, mtls, tried in that order",
        read_by=SERVER,
    )
    insecure: bool = setting(
        False,
        "serve a non-loopback address with --auth none anyway (refused without it)",
        read_by=SERVER,
    )
    auth_cache_seconds: float = setting(
        5.0,
        "seconds a server trusts an API key it has looked up: a revoked key stops working "
        "on every server within this",
        read_by=SERVER,
    )
    mtls_principals: str = setting(
        "",
        "JSON file mapping client-certificate identities (URI or DNS name, else common "
        'name) to tenant and role: {"billing.acme.internal": {"tenant": "acme", '
        '"role": "submitter"}} (--auth mtls)',
        read_by=SERVER,
    )
    reflection: str = setting(
        "on",
        "gRPC server reflection: on (behind authentication when --auth is on), open "
        "(without credentials), or off",
        read_by=SERVER,
    )
    dashboard: bool = setting(
        True,
        "serve the web dashboard at /dashboard/ on the server's HTTP listener (with the "
        "gRPC port's authentication: --auth)",
        read_by=SERVER,
    )
    dashboard_session_ttl: float = setting(
        3600.0,
        "seconds a dashboard login lasts unused (each request starts it again); its "
        "credential is checked at every request, as a gRPC call's is",
        read_by=SERVER,
    )
    log_format: str = setting(
        "auto", "json, console, or auto (console on a terminal)", read_by=SHARED
    )
    log_level: str = setting("info", "debug, info, warning or error", read_by=SHARED)

    # Values of the loaded handlers' own settings, by name (see `section`). Not a flag.
    handler_settings: Mapping[str, Any] = field(default_factory=dict, compare=False)

    # JWT authentication (--auth jwt): tokens from an identity provider, see server/auth_jwt.py.
    jwt_jwks: str = setting(
        "",
        "the identity provider's signing keys (JWKS): an https URL, or a file path; "
        "http only to a loopback address, for tests",
        read_by=SERVER,
    )
    jwt_jwks_refresh: float = setting(
        300.0,
        "seconds between fetches of the JWKS (a token naming a key it lacks fetches it "
        "sooner, rate-limited)",
        read_by=SERVER,
    )
    jwt_issuer: str = setting("", "the `iss` every token must carry", read_by=SERVER)
    jwt_audience: str = setting(
        "", "the audience every token's `aud` must contain: this service", read_by=SERVER
    )
    jwt_algorithms: str = setting(
        "RS256,ES256",
        "signature algorithms accepted, comma-separated (asymmetric ones only)",
        read_by=SERVER,
    )
    jwt_leeway: float = setting(
        30.0, "seconds of clock skew allowed when checking exp, nbf and iat", read_by=SERVER
    )
    jwt_tenant_claim: str = setting(
        "tenant",
        "the claim holding the caller's tenant (a dotted path for a nested one)",
        read_by=SERVER,
    )
    jwt_role_claim: str = setting(
        "role",
        "the claim holding the caller's role, a name or a list of names (a dotted path "
        "for a nested one, e.g. realm_access.batchd_role)",
        read_by=SERVER,
    )

    @classmethod
    def of(cls, **values: Any) -> Settings:
        """Settings from keyword values: the fields of Settings, and any other name as a
        handler setting (`Settings.of(worker_concurrency=4, smtp_url=...)`)."""
        own = {f.name for f in _declared(cls)}
        handler = {k: v for k, v in values.items() if k not in own}
        return cls(
            **{k: v for k, v in values.items() if k in own},
            handler_settings={**values.get("handler_settings", {}), **handler},
        )

    @classmethod
    def from_env(
        cls,
        env: Mapping[str, str] | None = None,
        *,
        sections: Iterable[type[Any]] = (),
        **overrides: Any,
    ) -> Settings:
        """Settings from BATCHD_* variables (BATCHD_REDIS_URL, BATCHD_PORT, ...), those of
        the handler settings `sections` included; `overrides` (not None) win."""
        env = os.environ if env is None else env
        values: dict[str, Any] = {}
        handler: dict[str, Any] = {}
        for f in _declared(cls):
            raw = env.get(_variable(f.name))
            if raw is not None:
                values[f.name] = _convert(f, raw)
        for f in _section_fields(sections):
            raw = env.get(_variable(f.name))
            if raw is not None:
                handler[f.name] = _convert(f, raw)
        if "redis_url" not in values and env.get("REDIS_URL"):
            values["redis_url"] = env["REDIS_URL"]
        own = {f.name for f in _declared(cls)}
        for name, value in overrides.items():
            if value is not None:
                (values if name in own else handler)[name] = value
        return cls(**values, handler_settings=handler)

    @classmethod
    def from_args(
        cls,
        argv: Sequence[str] | None = None,
        *,
        command: str = "batchd-service",
        description: str = "",
        sections: Iterable[type[Any]] = (),
    ) -> Settings:
        """Settings from command-line flags over the environment (see `parse_args`)."""
        return cls.parse_args(argv, command=command, description=description, sections=sections)[0]

    @classmethod
    def parse_args(
        cls,
        argv: Sequence[str] | None = None,
        *,
        command: str = "batchd-service",
        description: str = "",
        sections: Iterable[type[Any]] = (),
        epilog: str | None = None,
        pass_unknown: bool = False,
        env: Mapping[str, str] | None = None,
    ) -> tuple[Settings, list[str]]:
        """Settings from command-line flags over the environment, for `command` (the
        settings of the parts it runs, plus those of `sections`). Returns the settings and
        the arguments left over (none unless `pass_unknown`: else an unknown flag is an
        error). A bad value exits with a usage message naming it, as argparse does."""
        parser = argparse.ArgumentParser(prog=command, description=description, epilog=epilog)
        own = cls.fields_for(command)
        extra = _section_fields(sections)
        for f in own:
            _add_flag(parser, f)
        if extra:
            group = parser.add_argument_group("settings of the handlers")
            for f in extra:
                _add_flag(group, f)
        if pass_unknown:
            parsed, rest = parser.parse_known_args(argv)
        else:
            parsed, rest = parser.parse_args(argv), []
        overrides = {k: v for k, v in vars(parsed).items() if v is not None}
        try:
            return cls.from_env(env, sections=sections, **overrides), rest
        except ValueError as exc:
            parser.error(str(exc))

    @classmethod
    def fields_for(cls, command: str) -> list[dataclasses.Field[Any]]:
        """The settings `command` takes: those read by a part it runs."""
        parts = COMMANDS[command]
        return [f for f in _declared(cls) if f.metadata["read_by"] & parts]

    def section(self, cls: type[T]) -> T:
        """A handler's settings object (a dataclass of `setting` fields) from the values
        given, defaults for the rest."""
        values = {}
        for f in fields(cls):  # type: ignore[arg-type]
            if f.name in self.handler_settings:
                value = self.handler_settings[f.name]
                values[f.name] = _convert(f, value) if isinstance(value, str) else value
        return cls(**values)

    @property
    def chunk_jobs(self) -> int:
        """worker_max_chunks, or (0) enough chunk jobs to keep every item slot busy while
        some of the chunks end and others are claimed: three chunks of the default size
        per slot's worth, at least MIN_CHUNK_JOBS. (A worker of 500 slots running chunks
        of 100 10-ms items kept 0.76 of its slots busy with 8 chunk jobs, 0.86 with 16.)"""
        if self.worker_max_chunks > 0:
            return self.worker_max_chunks
        chunks = -(-3 * self.worker_concurrency // max(self.default_chunk_size, 1))
        return max(MIN_CHUNK_JOBS, chunks)

    @property
    def data_path(self) -> Path:
        return Path(self.data_dir)


def unknown_variables(
    env: Mapping[str, str],
    sections: Iterable[type[Any]] = (),
    *,
    all_known: bool = True,
) -> list[str]:
    """The BATCHD_* variables in `env` that no setting reads, sorted: neither a field of
    Settings (whichever part reads it: one environment usually serves every process), nor
    a setting of `sections`, nor a variable of another batchd program.

    With `all_known=False` — a process that loads no handlers, and so cannot know the
    names of the workers' handler settings — only those that look like a misspelt name
    of Settings are returned."""
    known = {_variable(f.name) for f in _declared(Settings)}
    known |= {_variable(f.name) for f in _section_fields(sections)}
    known |= OTHER_VARIABLES
    found = sorted(k for k in env if k.startswith("BATCHD_") and k not in known)
    if all_known:
        return found
    return [k for k in found if difflib.get_close_matches(k, known, n=1, cutoff=0.85)]


def suggestion(variable: str, sections: Iterable[type[Any]] = ()) -> str | None:
    """The known variable `variable` was most likely meant to be, if any."""
    known = [_variable(f.name) for f in _declared(Settings)]
    known += [_variable(f.name) for f in _section_fields(sections)]
    close = difflib.get_close_matches(variable, known, n=1, cutoff=0.7)
    return close[0] if close else None


def _declared(cls: type[Any]) -> list[dataclasses.Field[Any]]:
    """The settings of a settings dataclass: its fields made by `setting`."""
    return [f for f in fields(cls) if "help" in f.metadata]


def _section_fields(sections: Iterable[type[Any]]) -> list[dataclasses.Field[Any]]:
    """The fields of handler settings `sections`, each name once. A name declared twice
    by different sections, or one that Settings has, is a SettingError."""
    own = {f.name for f in _declared(Settings)}
    found: dict[str, tuple[dataclasses.Field[Any], type[Any]]] = {}
    for section in dict.fromkeys(sections):  # a section shared by handlers counts once
        if not dataclasses.is_dataclass(section):
            raise SettingError(f"handler settings {section!r}: not a dataclass")
        for f in _declared(section):
            if f.name in own:
                raise SettingError(
                    f"handler settings {section.__qualname__}.{f.name}: batchd's own setting"
                )
            if f.name in found:
                raise SettingError(
                    f"setting {f.name!r} is declared by {found[f.name][1].__qualname__} "
                    f"and by {section.__qualname__}"
                )
            found[f.name] = (f, section)
    return [f for f, _ in found.values()]


def _variable(name: str) -> str:
    return f"BATCHD_{name.upper()}"


def _kind(f: dataclasses.Field[Any]) -> type:
    return {"int": int, "float": float, "bool": bool}.get(str(f.type), str)


# How a BATCHD_* variable spells a bool setting.
_TRUE = frozenset({"1", "true", "yes", "on"})
_FALSE = frozenset({"0", "false", "no", "off", ""})


def _add_flag(parser: argparse.ArgumentParser | argparse._ArgumentGroup, f: Any) -> None:
    flag = "--" + f.name.replace("_", "-")
    # argparse formats help with %: a literal one (a "10%") must be doubled.
    help_text = f"{f.metadata['help']} [{_variable(f.name)}, default {f.default!r}]"
    help_text = help_text.replace("%", "%%")
    if _kind(f) is bool:  # --insecure / --no-insecure
        parser.add_argument(
            flag, dest=f.name, action=argparse.BooleanOptionalAction, default=None, help=help_text
        )
        return
    parser.add_argument(flag, dest=f.name, type=_kind(f), default=None, help=help_text)


def _convert(f: dataclasses.Field[Any], raw: str) -> Any:
    kind = _kind(f)
    if kind is str:
        return raw
    if kind is bool:
        word = raw.strip().lower()
        if word in _TRUE | _FALSE:
            return word in _TRUE
        raise SettingError(f"{_variable(f.name)}={raw!r}: expected 1 or 0 (true or false)")
    try:
        return kind(raw)
    except ValueError as exc:
        raise SettingError(f"{_variable(f.name)}={raw!r}: {exc}") from None
