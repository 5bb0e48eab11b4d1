"""The bridge's locally generated TLS certificate (WWE calls it over HTTPS).

A self-signed certificate for the listen address (plus 127.0.0.1 and localhost
on loopback), kept in AGENT_CERT_DIR and reused while it is valid for at least
30 more days and covers the address; otherwise made anew. `gateway-agent
trust-cert` trusts it (and the SPKI pin printed at start works with Chromium's
--ignore-certificate-errors-spki-list). Only a server certificate (CA:false, no
keyCertSign): trusted as a root it still cannot vouch for any other site.
"""
from __future__ import annotations

import base64
import datetime as dt
import hashlib
import ipaddress
import os
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

CERT_FILE, KEY_FILE = "bridge-cert.pem", "bridge-key.pem"
VALID_DAYS = 397          # the longest validity browsers accept for a server certificate
RENEW_BEFORE = dt.timedelta(days=30)


@dataclass(frozen=True)
class CertFiles:
    cert: Path
    key: Path
    spki_sha256: str      # base64 SHA-256 of the public key (Chromium's SPKI pin)
    not_after: dt.datetime
    created: bool


def _names(host: str) -> tuple[list[str], list[str]]:
    ips, dns = [host], []
    if ipaddress.ip_address(host).is_loopback:
        ips = sorted({host, "127.0.0.1"})
        dns = ["localhost"]
    return ips, dns


def spki_pin(cert: x509.Certificate) -> str:
    der = cert.public_key().public_bytes(serialization.Encoding.DER,
                                         serialization.PublicFormat.SubjectPublicKeyInfo)
    return base64.b64encode(hashlib.sha256(der).digest()).decode()


def _usable(cert: x509.Certificate, host: str) -> bool:
    if cert.not_valid_after_utc - dt.datetime.now(dt.timezone.utc) < RENEW_BEFORE:
        return False
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return False
    have = {str(ip) for ip in san.get_values_for_type(x509.IPAddress)}
    return set(_names(host)[0]) <= have


def ensure(cert_dir: Path, host: str) -> CertFiles:
    cert_dir.mkdir(parents=True, exist_ok=True)
    cert_path, key_path = cert_dir / CERT_FILE, cert_dir / KEY_FILE
    if cert_path.exists() and key_path.exists():
        try:
            cert = x509.load_pem_x509_certificate(cert_path.read_bytes())
            serialization.load_pem_private_key(key_path.read_bytes(), None)
            if _usable(cert, host):
                return CertFiles(cert_path, key_path, spki_pin(cert), cert.not_valid_after_utc, False)
        except ValueError:
            pass  # unreadable: make a new one
    key = ec.generate_private_key(ec.SECP256R1())
    ips, dns = _names(host)
    name = x509.Name([
        x509.NameAttribute(NameOID.COMMON_NAME, host),
        x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Agent phone bridge (local)"),
    ])
    now = dt.datetime.now(dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=VALID_DAYS))
        .add_extension(x509.SubjectAlternativeName(
            [x509.IPAddress(ipaddress.ip_address(i)) for i in ips] + [x509.DNSName(d) for d in dns]),
            critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.KeyUsage(digital_signature=True, key_encipherment=False,
                                     content_commitment=False, data_encipherment=False,
                                     key_agreement=False, key_cert_sign=False, crl_sign=False,
                                     encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .sign(key, hashes.SHA256())
    )
    tmp_key = key_path.with_suffix(".tmp")
    fd = os.open(tmp_key, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()))
    os.replace(tmp_key, key_path)
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return CertFiles(cert_path, key_path, spki_pin(cert), cert.not_valid_after_utc, True)
