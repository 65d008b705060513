"""Self-signed OPC UA application certificates, made locally (tests, demos, first set-up).

OPC UA identifies every application by a certificate whose subjectAltName
carries the application URI. These helpers make one with `cryptography`
(through asyncua's generator) and read the URI and fingerprint back, so that
a client can present the URI its certificate names, and trust lists can pin
certificates by fingerprint.
"""

from __future__ import annotations

import hashlib
import ipaddress
import socket
from dataclasses import dataclass
from pathlib import Path

from asyncua.crypto.cert_gen import (
    dump_private_key_as_pem,
    generate_private_key,
    generate_self_signed_app_certificate,
)
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import ExtendedKeyUsageOID


@dataclass(frozen=True)
class CertPair:
    certificate: Path
    private_key: Path
    application_uri: str


def make_certificate(
    directory: Path, name: str, application_uri: str, *, server: bool, days: int = 365
) -> CertPair:
    """Write `<name>.pem` (certificate) and `<name>-key.pem` into `directory`."""
    directory.mkdir(parents=True, exist_ok=True)
    key = generate_private_key()
    hostname = socket.gethostname()
    alt: list[x509.GeneralName] = [
        x509.UniformResourceIdentifier(application_uri),
        x509.DNSName(hostname),
        x509.DNSName("localhost"),
        x509.IPAddress(ipaddress.IPv4Address("127.0.0.1")),
    ]
    usage = [ExtendedKeyUsageOID.SERVER_AUTH if server else ExtendedKeyUsageOID.CLIENT_AUTH]
    cert = generate_self_signed_app_certificate(key, name, {}, alt, usage, days=days)
    cert_path = directory / f"{name}.pem"
    key_path = directory / f"{name}-key.pem"
    cert_path.write_bytes(cert.public_bytes(Encoding.PEM))
    key_path.write_bytes(dump_private_key_as_pem(key))
    key_path.chmod(0o600)
    return CertPair(cert_path, key_path, application_uri)


def load_certificate(path: Path) -> x509.Certificate:
    data = path.read_bytes()
    if b"-----BEGIN" in data:
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def application_uri(cert: x509.Certificate) -> str | None:
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return None
    uris = san.get_values_for_type(x509.UniformResourceIdentifier)
    return uris[0] if uris else None


def fingerprint(cert: x509.Certificate) -> str:
    return hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()


def trusted_fingerprints(locations: list[Path] | tuple[Path, ...]) -> set[str]:
    """Fingerprints of every certificate in the given files and directories (PEM or DER)."""
    found: set[str] = set()
    for loc in locations:
        files = sorted(p for p in loc.iterdir() if p.is_file()) if loc.is_dir() else [loc]
        for f in files:
            if f.suffix.lower() not in (".pem", ".der", ".crt", ".cer"):
                continue
            found.add(fingerprint(load_certificate(f)))
    return found
