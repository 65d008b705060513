"""OPC UA application certificates: made locally (tests, demos, first set-up), and checked.

OPC UA identifies every application by a certificate whose subjectAltName
carries the application URI. These helpers make one with `cryptography`
(self-signed through asyncua's generator, or signed by a local CA), read the
URI and fingerprint back, and decide whether a trust list accepts a server's
certificate: pinned by fingerprint, or issued directly by a CA certificate in
the list and valid today.
"""

from __future__ import annotations

import datetime
import hashlib
import ipaddress
import socket
from dataclasses import dataclass, field
from pathlib import Path

from asyncua.crypto.cert_gen import (
    dump_private_key_as_pem,
    generate_private_key,
    generate_self_signed_app_certificate,
)
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.serialization import (
    Encoding,
    load_der_private_key,
    load_pem_private_key,
)
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID


@dataclass(frozen=True)
class CertPair:
    certificate: Path
    private_key: Path
    application_uri: str


def make_certificate(
    directory: Path,
    name: str,
    application_uri: str,
    *,
    server: bool,
    days: int = 365,
    issuer: CertPair | None = None,
    not_before: datetime.datetime | None = None,
) -> CertPair:
    """Write `<name>.pem` (certificate) and `<name>-key.pem` into `directory`.

    Self-signed, or signed by `issuer` (a CA from `make_ca`)."""
    key = generate_private_key()
    hostname = socket.gethostname()
    alt: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(application_uri),
        x509.DNSName(hostname),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
    ]
    usage = [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
    if issuer is None:
        cert = generate_self_signed_app_certificate(key, name, {}, alt, usage, days=days)
    else:
        cert = _issue(key, name, alt, usage, days, issuer, not_before)
    return _write(directory, name, cert, key, application_uri)


def make_ca(directory: Path, name: str, days: int = 3650) -> CertPair:
    """A local certificate authority: a self-signed CA certificate and its key."""
    key = generate_private_key()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(_CA_USAGE, critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    return _write(directory, name, cert, key, "")


_CA_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=False,
    key_encipherment=False,
    data_encipherment=False,
    key_agreement=False,
    key_cert_sign=True,
    crl_sign=True,
    encipher_only=False,
    decipher_only=False,
)
# What OPC UA Part 6 asks of an application instance certificate.
_APP_USAGE = x509.KeyUsage(
    digital_signature=True,
    content_commitment=True,
    key_encipherment=True,
    data_encipherment=True,
    key_agreement=False,
    key_cert_sign=False,
    crl_sign=False,
    encipher_only=False,
    decipher_only=False,
)


def _issue(
    key: rsa.RSAPrivateKey,
    name: str,
    alt: list[x509.GeneralName],
    usage: list[x509.ObjectIdentifier],
    days: int,
    issuer: CertPair,
    not_before: datetime.datetime | None,
) -> x509.Certificate:
    ca_cert = load_certificate(issuer.certificate)
    ca_key = load_pem_private_key(issuer.private_key.read_bytes(), password=None)
    if not isinstance(ca_key, rsa.RSAPrivateKey):
        raise ValueError(f"{issuer.private_key}: expected an RSA key")
    start = not_before or datetime.datetime.now(datetime.UTC) - datetime.timedelta(minutes=5)
    return (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(start + datetime.timedelta(days=days))
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(_APP_USAGE, critical=True)
        .add_extension(x509.ExtendedKeyUsage(usage), critical=False)
        .add_extension(x509.SubjectAlternativeName(alt), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),  # type: ignore[arg-type]
            critical=False,
        )
        .sign(ca_key, hashes.SHA256())
    )


def _write(
    directory: Path, name: str, cert: x509.Certificate, key: rsa.RSAPrivateKey, uri: str
) -> CertPair:
    directory.mkdir(parents=True, exist_ok=True)
    cert_path = directory / f"{name}.pem"
    key_path = directory / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(Encoding.PEM))
    key_path.write_bytes(dump_private_key_as_pem(key))
    key_path.chmod(0o600)
    return CertPair(cert_path, key_path, uri)


def load_certificate(path: Path) -> x509.Certificate:
    data = path.read_bytes()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def load_private_key(path: Path) -> object:
    """A private key file (PEM or DER, unencrypted). Raises OSError or ValueError."""
    data = path.read_bytes()
    if b"-----BEGIN" in data:
        return load_pem_private_key(data, password=None)
    return load_der_private_key(data, password=None)


def application_uri(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def trusted_certificates(locations: list[Path] | tuple[Path, ...]) -> list[x509.Certificate]:
    """Every certificate in the given files and directories (PEM or DER)."""
    found: list[x509.Certificate] = []
    for loc in locations:
        files = sorted(p for p in loc.iterdir() if p.is_file()) if loc.is_dir() else [loc]
        for f in files:
            if f.suffix.lower() not in (".pem", ".der", ".crt", ".cer"):
                continue
            found.append(load_certificate(f))
    return found


def trusted_fingerprints(locations: list[Path] | tuple[Path, ...]) -> set[str]:
    return {fingerprint(c) for c in trusted_certificates(locations)}


def is_ca(cert: x509.Certificate) -> bool:
    try:
        return bool(cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca)
    except x509.ExtensionNotFound:
        return False


@dataclass
class Trust:
    """A trust list: pinned certificates, and CAs whose direct signature is accepted."""

    pinned: set[str] = field(default_factory=set)
    authorities: list[x509.Certificate] = field(default_factory=list)

    @classmethod
    def of(cls, certificates: list[x509.Certificate]) -> Trust:
        return cls({fingerprint(c) for c in certificates}, [c for c in certificates if is_ca(c)])

    @property
    def empty(self) -> bool:
        return not self.pinned

    def refusal(self, cert: x509.Certificate, now: datetime.datetime | None = None) -> str | None:
        """None when trusted, else why not (one line, for the operator)."""
        if fingerprint(cert) in self.pinned:
            return None
        for ca in self.authorities:
            if cert.issuer != ca.subject or not _signed_by(cert, ca):
                continue
            at = now or datetime.datetime.now(datetime.UTC)
            if at < cert.not_valid_before_utc:
                return f"its certificate is not valid before {cert.not_valid_before_utc:%Y-%m-%d}"
            if at > cert.not_valid_after_utc:
                return f"its certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}"
            if at > ca.not_valid_after_utc:
                return f"the CA that signed it expired on {ca.not_valid_after_utc:%Y-%m-%d}"
            return None
        return (
            "the server's certificate is not in trusted_server_certs nor signed by a CA "
            f"there (sha256 {fingerprint(cert)[:16]}…)"
        )


def _signed_by(cert: x509.Certificate, ca: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(ca)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True
