"""Certificates for the TLS tests, made with `cryptography` when a test asks (nothing
committed): a CA, a server certificate for 127.0.0.1 and localhost, client certificates
signed by that CA, and another CA with a client certificate of its own."""

from __future__ import annotations

import datetime
import ipaddress
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

_LIFETIME = datetime.timedelta(days=1)


@dataclass(frozen=True)
class Issued:
    """A certificate and its key, as PEM files."""

    cert: Path
    key: Path


@dataclass(frozen=True)
class Authority:
    """A CA that signs certificates into `directory`."""

    name: str
    directory: Path
    key: ec.EllipticCurvePrivateKey
    certificate: x509.Certificate

    @property
    def cert(self) -> Path:
        return self.directory / f"{self.name}.pem"

    def issue(
        self,
        name: str,
        *,
        common_name: str,
        dns: tuple[str, ...] = (),
        ips: tuple[str, ...] = (),
        uris: tuple[str, ...] = (),
        server: bool = False,
    ) -> Issued:
        key = ec.generate_private_key(ec.SECP256R1())
        now = datetime.datetime.now(datetime.UTC)
        names: list[x509.GeneralName] = [x509.UniformResourceIdentifier(u) for u in uris]
        names += [x509.DNSName(d) for d in dns]
        names += [x509.IPAddress(ipaddress.ip_address(i)) for i in ips]
        usage = ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
            .issuer_name(self.certificate.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + _LIFETIME)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.ExtendedKeyUsage([usage]), critical=False)
        )
        if names:
            builder = builder.add_extension(x509.SubjectAlternativeName(names), critical=False)
        certificate = builder.sign(self.key, hashes.SHA256())
        issued = Issued(self.directory / f"{name}.pem", self.directory / f"{name}.key")
        issued.cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
        issued.key.write_bytes(_pem_key(key))
        return issued


def authority(directory: Path, name: str) -> Authority:
    """A new self-signed CA, its certificate written to `directory/name.pem`."""
    key = ec.generate_private_key(ec.SECP256R1())
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"batchd test {name}")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + _LIFETIME)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .sign(key, hashes.SHA256())
    )
    directory.mkdir(parents=True, exist_ok=True)
    ca = Authority(name, directory, key, certificate)
    ca.cert.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return ca


@dataclass(frozen=True)
class Certificates:
    """Everything a TLS test needs."""

    ca: Authority
    server: Issued
    client: Issued
    """Signed by `ca`: SANs spiffe://batchd.test/team-a and team-a.clients.test, CN team-a."""
    client_cn_only: Issued
    """Signed by `ca`, with no SAN: its identity is its CN, cn-only."""
    other_ca: Authority
    other_client: Issued
    """Signed by `other_ca`, which the server does not trust."""


def make_certificates(directory: Path) -> Certificates:
    ca = authority(directory, "ca")
    other = authority(directory, "other-ca")
    return Certificates(
        ca=ca,
        server=ca.issue(
            "server",
            common_name="batchd server",
            dns=("localhost",),
            ips=("127.0.0.1", "::1"),
            server=True,
        ),
        client=ca.issue(
            "client",
            common_name="team-a",
            uris=("spiffe://batchd.test/team-a",),
            dns=("team-a.clients.test",),
        ),
        client_cn_only=ca.issue("client-cn", common_name="cn-only"),
        other_ca=other,
        other_client=other.issue("other-client", common_name="intruder"),
    )


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
