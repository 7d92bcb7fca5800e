"""JwtAuthenticator against a real JWKS: served by aiohttp on a loopback port, or a file;
and `--auth jwt` through a real server and the real client.

Keys are made here with `cryptography`; tokens are signed with PyJWT, or built by hand
where PyJWT refuses to make them (`alg: none`, HS256 keyed with a public key).
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import hmac
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import jwt
import pytest
import structlog
from aiohttp import web
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from jwt.algorithms import ECAlgorithm, RSAAlgorithm
from support.in_process_server import HOST, running_server

from batchd.client import AsyncClient, BatchdError
from batchd.core.config import SettingError, Settings
from batchd.core.store import BatchStore
from batchd.server.auth import UNAUTHENTICATED_MESSAGE
from batchd.server.auth_jwt import (
    MAX_JWKS_BYTES,
    MIN_REFETCH_INTERVAL,
    JwksError,
    JwtAuthenticator,
    authenticator,
)
from batchd.server.principal import Credentials, Principal, Role

ISSUER = "https://idp.example.test/realms/batchd"
AUDIENCE = "batchd"

RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
EC_KEY = ec.generate_private_key(ec.SECP256R1())
# Another key, published under no kid: a forger's.
OTHER_RSA_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ROTATED_KEY = rsa.generate_private_key(public_exponent=65537, key_size=2048)


def jwk(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, kid: str) -> dict[str, Any]:
    if isinstance(key, rsa.RSAPrivateKey):
        entry = RSAAlgorithm.to_jwk(key.public_key(), as_dict=True)
        alg = "RS256"
    else:
        entry = ECAlgorithm.to_jwk(key.public_key(), as_dict=True)
        alg = "ES256"
    return {**entry, "kid": kid, "alg": alg, "use": "sig"}


def jwks(*entries: dict[str, Any]) -> dict[str, Any]:
    return {"keys": list(entries)}


def claims(**overrides: Any) -> dict[str, Any]:
    now = int(time.time())
    values: dict[str, Any] = {
        "iss": ISSUER,
        "aud": AUDIENCE,
        "sub": "svc-billing",
        "iat": now,
        "exp": now + 300,
        "tenant": "acme",
        "role": "submitter",
    }
    values.update(overrides)
    return {k: v for k, v in values.items() if v is not None}


def token(
    key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey = RSA_KEY,
    kid: str = "k1",
    **overrides: Any,
) -> str:
    alg = "RS256" if isinstance(key, rsa.RSAPrivateKey) else "ES256"
    return jwt.encode(claims(**overrides), key, algorithm=alg, headers={"kid": kid})


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hand_made(header: dict[str, Any], payload: dict[str, Any], sign: Any = None) -> str:
    """A compact JWS built without PyJWT; `sign(signing_input) -> bytes` or unsigned."""
    signing_input = f"{b64(json.dumps(header).encode())}.{b64(json.dumps(payload).encode())}"
    signature = b64(sign(signing_input.encode())) if sign else ""
    return f"{signing_input}.{signature}"


def bearer(value: str | None) -> Credentials:
    return Credentials(bearer=value, peer_identity=None)


class JwksServer:
    """A JWKS endpoint on a free loopback port; counts the fetches it serves."""

    def __init__(self, document: dict[str, Any]) -> None:
        self.document = document
        self.fetches = 0
        self._fetched = asyncio.Condition()
        self._runner: web.AppRunner | None = None
        self.url = ""

    async def start(self) -> None:
        app = web.Application()
        app.router.add_get("/jwks.json", self._serve)
        self._runner = web.AppRunner(app, access_log=None)
        await self._runner.setup()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        await web.SockSite(self._runner, sock).start()
        self.url = f"http://127.0.0.1:{port}/jwks.json"

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def wait_for_fetches(self, count: int) -> None:
        async with self._fetched:
            await asyncio.wait_for(self._fetched.wait_for(lambda: self.fetches >= count), 10)

    async def _serve(self, request: web.Request) -> web.Response:
        async with self._fetched:
            self.fetches += 1
            self._fetched.notify_all()
        return web.json_response(self.document)


class FakeClock:
    """The authenticator's monotonic clock, moved by the test (rate limits)."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def settings(jwks_source: str, **overrides: Any) -> Settings:
    values: dict[str, Any] = {
        "jwt_jwks": jwks_source,
        "jwt_issuer": ISSUER,
        "jwt_audience": AUDIENCE,
    }
    values.update(overrides)
    return Settings(**values)


@pytest.fixture
async def idp() -> AsyncIterator[JwksServer]:
    server = JwksServer(jwks(jwk(RSA_KEY, "k1"), jwk(EC_KEY, "k-ec")))
    await server.start()
    yield server
    await server.stop()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
async def auth(idp: JwksServer, clock: FakeClock) -> JwtAuthenticator:
    started = JwtAuthenticator(settings(idp.url), clock=clock)
    await started.start()
    return started


async def test_valid_token_gives_its_principal(auth: JwtAuthenticator) -> None:
    assert await auth.authenticate(bearer(token())) == Principal(
        subject="jwt:svc-billing", tenant="acme", role=Role.SUBMITTER
    )
    es256 = token(EC_KEY, kid="k-ec", sub="svc-report", role="reader")
    assert await auth.authenticate(bearer(es256)) == Principal(
        subject="jwt:svc-report", tenant="acme", role=Role.READER
    )


async def test_audience_list_containing_ours_is_accepted(auth: JwtAuthenticator) -> None:
    principal = await auth.authenticate(bearer(token(aud=["other", AUDIENCE])))
    assert principal is not None


@pytest.mark.parametrize(
    ("case", "overrides"),
    [
        ("expired", {"exp": -120}),
        ("not yet valid", {"nbf": 300}),
        ("issued in the future", {"iat": 300}),
        ("no exp", {"exp": None}),
        ("wrong audience", {"aud": "someone-else"}),
        ("no audience", {"aud": None}),
        ("wrong issuer", {"iss": "https://evil.example.test"}),
        ("no issuer", {"iss": None}),
        ("no subject", {"sub": None}),
        ("no tenant", {"tenant": None}),
        ("tenant not a tenant name", {"tenant": "Acme Corp"}),
        ("tenant not a string", {"tenant": ["acme"]}),
        ("unknown role", {"role": "superuser"}),
        ("no role", {"role": None}),
        ("no known role in a list", {"role": ["superuser", "root"]}),
    ],
)
async def test_bad_claims_do_not_authenticate(
    auth: JwtAuthenticator, case: str, overrides: dict[str, Any]
) -> None:
    # Times are given from now, read when the test runs: a slow suite reaches this test
    # minutes after collection.
    now = int(time.time())
    for claim in ("exp", "nbf", "iat"):
        if overrides.get(claim) is not None:
            overrides = {**overrides, claim: now + overrides[claim]}
    assert await auth.authenticate(bearer(token(**overrides))) is None, case


async def test_leeway_allows_small_clock_skew(auth: JwtAuthenticator) -> None:
    now = int(time.time())
    assert await auth.authenticate(bearer(token(exp=now - 5))) is not None
    assert await auth.authenticate(bearer(token(nbf=now + 5))) is not None


async def test_role_list_gives_the_highest_known_role(auth: JwtAuthenticator) -> None:
    principal = await auth.authenticate(bearer(token(role=["reader", "bogus", "operator"])))
    assert principal is not None
    assert principal.role is Role.OPERATOR


async def test_nested_claims_by_dotted_path(idp: JwksServer) -> None:
    nested_claims = JwtAuthenticator(
        settings(
            idp.url,
            jwt_tenant_claim="https://batchd.example.test/tenant",
            jwt_role_claim="realm_access.batchd_role",
        )
    )
    extra: dict[str, Any] = {
        "https://batchd.example.test/tenant": "globex",
        "realm_access": {"batchd_role": ["admin"], "roles": ["x"]},
    }
    nested = token(tenant=None, role=None, **extra)
    assert await nested_claims.authenticate(bearer(nested)) == Principal(
        subject="jwt:svc-billing", tenant="globex", role=Role.ADMIN
    )
    # The top-level claims the defaults would read are not looked at.
    assert await nested_claims.authenticate(bearer(token())) is None


async def test_wrong_signature_does_not_authenticate(auth: JwtAuthenticator) -> None:
    forged = token(OTHER_RSA_KEY, kid="k1", role="admin")
    assert await auth.authenticate(bearer(forged)) is None
    # Nor a genuine token with its payload changed.
    header, _, signature = token().split(".")
    changed = b64(json.dumps(claims(role="admin")).encode())
    assert await auth.authenticate(bearer(f"{header}.{changed}.{signature}")) is None


async def test_alg_none_does_not_authenticate(auth: JwtAuthenticator) -> None:
    for alg in ("none", "None", "NONE"):
        unsigned = hand_made({"alg": alg, "kid": "k1", "typ": "JWT"}, claims(role="admin"))
        assert await auth.authenticate(bearer(unsigned)) is None


async def test_hs256_keyed_with_the_public_key_does_not_authenticate(
    auth: JwtAuthenticator,
) -> None:
    """The key-confusion attack: HMAC with the published public key as its secret."""
    pem = RSA_KEY.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    jwk_json = json.dumps(jwk(RSA_KEY, "k1")).encode()
    for secret in (pem, jwk_json):
        forged = hand_made(
            {"alg": "HS256", "kid": "k1", "typ": "JWT"},
            claims(role="admin"),
            lambda data, secret=secret: hmac.new(secret, data, hashlib.sha256).digest(),
        )
        assert await auth.authenticate(bearer(forged)) is None


async def test_a_key_verifies_only_with_its_own_algorithm(auth: JwtAuthenticator) -> None:
    # Signed by the EC key, but the header names the RSA key's kid.
    mismatched = token(EC_KEY, kid="k1")
    assert await auth.authenticate(bearer(mismatched)) is None


@pytest.mark.parametrize(
    "garbage",
    [
        None,
        "",
        "garbage",
        "a.b.c",
        "....",
        "e30.e30.",  # {} . {} .
        b64(b'{"alg":"RS256","kid":"k1"}') + ".not-base64!." + "x",
        "x" * 100_000,
    ],
)
async def test_garbage_does_not_authenticate(auth: JwtAuthenticator, garbage: str | None) -> None:
    assert await auth.authenticate(bearer(garbage)) is None


async def test_no_kid_does_not_authenticate(auth: JwtAuthenticator) -> None:
    no_kid = jwt.encode(claims(), RSA_KEY, algorithm="RS256")
    assert await auth.authenticate(bearer(no_kid)) is None


async def test_unknown_kid_fetches_the_jwks_again_rate_limited(
    auth: JwtAuthenticator, idp: JwksServer, clock: FakeClock
) -> None:
    rotated = token(ROTATED_KEY, kid="k2")
    # The fetch at start counts: none again within the interval.
    assert await auth.authenticate(bearer(rotated)) is None
    assert idp.fetches == 1

    # Not published yet: one fetch, then none for a while however many tokens come.
    clock.now += MIN_REFETCH_INTERVAL
    assert await auth.authenticate(bearer(rotated)) is None
    assert idp.fetches == 2
    results = await asyncio.gather(
        *(auth.authenticate(bearer(token(ROTATED_KEY, kid=f"k-{n}"))) for n in range(20))
    )
    assert results == [None] * 20
    assert idp.fetches == 2

    # Published: still within the rate limit, then found by the next fetch.
    idp.document = jwks(jwk(RSA_KEY, "k1"), jwk(ROTATED_KEY, "k2"))
    clock.now += MIN_REFETCH_INTERVAL / 2
    assert await auth.authenticate(bearer(rotated)) is None
    assert idp.fetches == 2
    clock.now += MIN_REFETCH_INTERVAL / 2
    assert await auth.authenticate(bearer(rotated)) is not None
    assert idp.fetches == 3
    # Known now: no more fetches.
    assert await auth.authenticate(bearer(rotated)) is not None
    assert idp.fetches == 3


async def test_first_token_loads_the_jwks_without_start(idp: JwksServer) -> None:
    unstarted = authenticator(settings(idp.url))
    assert idp.fetches == 0
    assert await unstarted.authenticate(bearer(token())) is not None
    assert idp.fetches == 1


async def test_jwks_is_fetched_again_when_older_than_the_refresh(
    auth: JwtAuthenticator, idp: JwksServer, clock: FakeClock
) -> None:
    # The provider retires k1 and publishes k2.
    idp.document = jwks(jwk(ROTATED_KEY, "k2"))
    assert await auth.authenticate(bearer(token())) is not None
    clock.now += 299
    assert await auth.authenticate(bearer(token())) is not None
    assert idp.fetches == 1
    clock.now += 1  # 300 s, the default refresh: fetched before the next check
    assert await auth.authenticate(bearer(token())) is None
    assert await auth.authenticate(bearer(token(ROTATED_KEY, kid="k2"))) is not None
    assert idp.fetches == 2


async def test_failed_refresh_keeps_the_keys(
    auth: JwtAuthenticator, idp: JwksServer, clock: FakeClock
) -> None:
    await idp.stop()
    clock.now += 300
    with structlog.testing.capture_logs() as logs:
        assert await auth.authenticate(bearer(token())) is not None
    assert [entry["event"] for entry in logs] == ["jwks_fetch_failed"]
    # Not tried again on every call: after another refresh period.
    with structlog.testing.capture_logs() as logs:
        assert await auth.authenticate(bearer(token(kid="k-unknown"))) is None
    assert [entry["event"] for entry in logs] == ["jwt_rejected"]


async def test_oversized_jwks_is_refused(idp: JwksServer) -> None:
    idp.document = jwks(jwk(RSA_KEY, "k1"), {"kty": "RSA", "pad": "x" * MAX_JWKS_BYTES})
    with pytest.raises(JwksError, match="larger than"):
        await JwtAuthenticator(settings(idp.url)).start()


async def test_jwks_file(tmp_path: Path) -> None:
    path = tmp_path / "jwks.json"
    path.write_text(json.dumps(jwks(jwk(RSA_KEY, "k1"))))
    from_file = JwtAuthenticator(settings(str(path)))
    await from_file.start()
    assert await from_file.authenticate(bearer(token())) is not None
    assert await from_file.authenticate(bearer(token(OTHER_RSA_KEY))) is None


async def test_jwks_that_cannot_be_loaded_fails_the_start(tmp_path: Path) -> None:
    missing = JwtAuthenticator(settings(str(tmp_path / "missing.json")))
    with pytest.raises(JwksError, match=r"cannot read .*missing\.json"):
        await missing.start()
    secret_only = tmp_path / "oct.json"
    secret_only.write_text(json.dumps(jwks({"kty": "oct", "kid": "s", "k": b64(b"0" * 32)})))
    with pytest.raises(JwksError, match="no signing key"):
        await JwtAuthenticator(settings(str(secret_only))).start()


async def test_rejections_are_logged_without_the_token(auth: JwtAuthenticator) -> None:
    expired = token(exp=int(time.time()) - 120)
    with structlog.testing.capture_logs() as logs:
        assert await auth.authenticate(bearer(expired)) is None
    assert logs == [
        {"event": "jwt_rejected", "reason": "ExpiredSignatureError", "log_level": "debug"}
    ]
    assert expired not in repr(logs)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"jwt_issuer": ""}, "--jwt-issuer"),
        ({"jwt_audience": " "}, "--jwt-audience"),
        ({"jwt_jwks": ""}, "--jwt-jwks"),
        ({"jwt_jwks": "http://idp.example.test/jwks.json"}, "loopback"),
        ({"jwt_jwks": "ftp://idp.example.test/jwks.json"}, "https URL or a file path"),
        ({"jwt_algorithms": "RS256,HS256"}, "'HS256' is not accepted"),
        ({"jwt_algorithms": "none"}, "'none' is not accepted"),
        ({"jwt_algorithms": " , "}, "at least one"),
        ({"jwt_jwks_refresh": 0.0}, "REFRESH"),
        ({"jwt_leeway": -1.0}, "LEEWAY"),
        ({"jwt_role_claim": "realm_access..role"}, "ROLE_CLAIM"),
    ],
)
def test_bad_settings_are_configuration_errors(overrides: dict[str, Any], message: str) -> None:
    with pytest.raises(SettingError, match=message):
        JwtAuthenticator(settings("https://idp.example.test/jwks.json", **overrides))


@pytest.mark.parametrize(
    "url",
    [
        "https://idp.example.test/jwks.json",
        "http://127.0.0.1:8080/jwks.json",
        "http://localhost/jwks.json",
        "http://[::1]:8080/jwks.json",
    ],
)
def test_jwks_url_https_or_loopback_http(url: str) -> None:
    assert JwtAuthenticator(settings(url)).config.jwks == url


def test_settings_from_environment() -> None:
    loaded = Settings.from_env(
        {
            "BATCHD_JWT_JWKS": "https://idp.example.test/jwks.json",
            "BATCHD_JWT_ISSUER": ISSUER,
            "BATCHD_JWT_AUDIENCE": AUDIENCE,
            "BATCHD_JWT_ALGORITHMS": "ES256",
            "BATCHD_JWT_LEEWAY": "5",
            "BATCHD_JWT_JWKS_REFRESH": "60",
            "BATCHD_JWT_TENANT_CLAIM": "org",
            "BATCHD_JWT_ROLE_CLAIM": "realm_access.roles",
        }
    )
    config = JwtAuthenticator(loaded).config
    assert config.algorithms == {"ES256"}
    assert (config.leeway, config.refresh) == (5.0, 60.0)
    assert (config.tenant_claim, config.role_claim) == ("org", "realm_access.roles")


async def test_jwt_through_a_real_server_and_client(
    redis_url: str, store: BatchStore, idp: JwksServer
) -> None:
    jwt_settings = {"jwt_jwks": idp.url, "jwt_issuer": ISSUER, "jwt_audience": AUDIENCE}
    tenant = f"t-{uuid.uuid4().hex[:12]}"
    async with running_server(redis_url, auth="jwt", **jwt_settings) as server:
        target = f"{HOST}:{server.port}"
        async with AsyncClient(target, token=token(tenant=tenant), timeout=10) as submitter:
            batch_id = (
                await submitter.submit("test.echo", [{"custom_id": "a", "params": {"n": 1}}])
            ).batch.batch_id

        async with AsyncClient(target, token=token(tenant=tenant, role="reader"), timeout=10) as c:
            assert (await c.get(batch_id)).batch_id == batch_id
            with pytest.raises(BatchdError) as denied:
                await c.cancel(batch_id)
            assert denied.value.code == grpc.StatusCode.PERMISSION_DENIED

        # Another tenant's token does not see the batch.
        async with AsyncClient(target, token=token(tenant=f"o-{tenant}"), timeout=10) as c:
            with pytest.raises(BatchdError) as hidden:
                await c.get(batch_id)
            assert hidden.value.code == grpc.StatusCode.NOT_FOUND

        # Bad tokens: one answer, whatever was wrong.
        bad = [
            None,
            "garbage",
            token(tenant=tenant, exp=int(time.time()) - 120),
            token(tenant=tenant, aud="someone-else"),
            token(OTHER_RSA_KEY, tenant=tenant),
            hand_made({"alg": "none", "kid": "k1"}, claims(tenant=tenant, role="admin")),
        ]
        answers = set()
        for value in bad:
            async with AsyncClient(target, token=value, timeout=10) as c:
                with pytest.raises(BatchdError) as refused:
                    await c.get(batch_id)
            answers.add((refused.value.code, refused.value.message))
        assert answers == {(grpc.StatusCode.UNAUTHENTICATED, UNAUTHENTICATED_MESSAGE)}
