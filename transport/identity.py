"""Node identity: an Ed25519 key, the node id derived from it, and a certificate from the cluster CA.

The node id is a short printable digest of the public key (the libp2p "peer id = hash of the key"
scheme), so a certificate can only carry the id of the key it certifies: a peer claiming another
id is detected without any lookup. The cluster CA (also Ed25519) decides who may join.

Files (PEM): a CA directory holds ``ca.key`` (0600) and ``ca.crt``; a node data directory holds
``node.key`` (0600), ``node.crt`` and a copy of ``ca.crt``.
"""

from __future__ import annotations

import base64
import datetime as _dt
import hashlib
import ipaddress
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.x509.oid import NameOID

from agentnode.transport.base import PeerRefused

__all__ = [
    "CA_CERT_FILE",
    "CA_KEY_FILE",
    "NODE_CERT_FILE",
    "NODE_ID_LENGTH",
    "NODE_KEY_FILE",
    "IdentityError",
    "NodeIdentity",
    "create_ca",
    "is_node_id",
    "issue_node_certificate",
    "node_id_from_certificate",
    "node_id_from_public_key",
    "verify_peer_certificate",
]

CA_KEY_FILE = "ca.key"
CA_CERT_FILE = "ca.crt"
NODE_KEY_FILE = "node.key"
NODE_CERT_FILE = "node.crt"

NODE_ID_BITS = 100
"""100 bits of SHA-256: collision-free for any realistic cluster (birthday bound ~2^50 keys)."""
NODE_ID_LENGTH = NODE_ID_BITS // 5
"""Base32 carries 5 bits per character (RFC 4648 section 6), so 20 characters."""
_ID_ALPHABET = frozenset("abcdefghijklmnopqrstuvwxyz234567")

CLOCK_SKEW_ALLOWANCE = _dt.timedelta(days=1)
"""Certificates start this far in the past, so a peer whose clock lags (a VM restored from a snapshot,
NTP not yet synchronised) still accepts them. With 5 minutes, a node one hour behind refused every
fresh certificate and was cut off (chaos scenario clock-skew-backward). Back-dating grants nothing:
the CA signed the key either way. `agentnode doctor` flags skew beyond 500 ms long before this."""
NODE_VALIDITY_DAYS_DEFAULT = 365
CA_VALIDITY_DAYS_DEFAULT = 3650


class IdentityError(Exception):
    """Identity files are missing, unreadable or inconsistent; the message says which command fixes it."""


def node_id_from_public_key(key: Ed25519PublicKey) -> str:
    """The node id: lowercase base32 (RFC 4648, no padding) of the first 100 bits of SHA-256(raw key)."""
    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    digest = hashlib.sha256(raw).digest()
    # 13 bytes = 104 bits encode to 21 characters; the first 20 carry exactly the first 100 bits.
    return base64.b32encode(digest[:13]).decode("ascii").lower()[:NODE_ID_LENGTH]


def is_node_id(text: str) -> bool:
    """True if `text` has the shape of a node id (20 characters of [a-z2-7])."""
    return len(text) == NODE_ID_LENGTH and all(c in _ID_ALPHABET for c in text)


def node_id_from_certificate(cert: x509.Certificate) -> str:
    """The id in the certificate's CN, after checking it is the digest of the certificate's key.

    Raises `PeerRefused` if the key is not Ed25519, the CN is missing, or the CN names another id.
    """
    key = cert.public_key()
    if not isinstance(key, Ed25519PublicKey):
        raise PeerRefused(f"certificate key is {type(key).__name__}, expected Ed25519")
    derived = node_id_from_public_key(key)
    names = cert.subject.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not names:
        raise PeerRefused("certificate has no common name (node id)")
    claimed = names[0].value
    if isinstance(claimed, bytes):
        claimed = claimed.decode("ascii", "replace")
    if claimed != derived:
        raise PeerRefused(f"certificate claims node id {claimed!r} but its key hashes to {derived!r}")
    return derived


def verify_peer_certificate(
    cert_der: bytes,
    chain_der: Sequence[bytes],
    ca_cert: x509.Certificate,
    now: _dt.datetime,
    expected_id: str | None,
) -> str:
    """Check a peer's certificate end to end and return its node id; raise `PeerRefused` with the reason.

    Checks: parseable, issued and signed by `ca_cert` (the cluster has no intermediates, so `chain_der`
    is accepted but not needed), within its validity at `now`, not a CA, id matches its key digest,
    and equals `expected_id` when given. Used where the TLS library does not verify (QUIC servers).
    """
    del chain_der  # leaf certificates are signed directly by the cluster CA
    try:
        cert = x509.load_der_x509_certificate(cert_der)
    except ValueError as exc:
        raise PeerRefused(f"peer certificate is not valid DER: {exc}") from None
    if cert.issuer != ca_cert.subject:
        raise PeerRefused(f"certificate issued by {cert.issuer.rfc4514_string()!r}, not by the cluster CA")
    try:
        cert.verify_directly_issued_by(ca_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise PeerRefused(f"certificate is not signed by the cluster CA: {exc or type(exc).__name__}") from None
    if now.tzinfo is None:
        now = now.replace(tzinfo=_dt.timezone.utc)
    if now < cert.not_valid_before_utc:
        raise PeerRefused(f"certificate not valid before {cert.not_valid_before_utc.isoformat()}")
    if now > cert.not_valid_after_utc:
        raise PeerRefused(f"certificate expired at {cert.not_valid_after_utc.isoformat()}")
    try:
        constraints = cert.extensions.get_extension_for_class(x509.BasicConstraints).value
    except x509.ExtensionNotFound:
        constraints = None
    if constraints is not None and constraints.ca:
        raise PeerRefused("peer presented a CA certificate, not a node certificate")
    node_id = node_id_from_certificate(cert)
    if expected_id is not None and node_id != expected_id:
        raise PeerRefused(f"peer is node {node_id!r}, expected {expected_id!r}")
    return node_id


def create_ca(ca_dir: Path, *, name: str = "agentnode cluster CA", validity_days: int = CA_VALIDITY_DAYS_DEFAULT) -> Path:
    """Create a cluster CA (Ed25519) in `ca_dir`: ``ca.key`` (0600) and ``ca.crt``. Returns the certificate path.

    Refuses to overwrite an existing CA: every node certificate depends on that key.
    """
    if validity_days <= 0:
        raise IdentityError(f"CA validity must be at least one day, got {validity_days}")
    ca_dir = Path(ca_dir)
    key_path, cert_path = ca_dir / CA_KEY_FILE, ca_dir / CA_CERT_FILE
    if key_path.exists() or cert_path.exists():
        raise IdentityError(
            f"a CA already exists in {ca_dir} (found {key_path.name if key_path.exists() else cert_path.name}); "
            "refusing to overwrite it, since every node certificate depends on it. Use another --dir."
        )
    ca_dir.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
    now = _dt.datetime.now(_dt.timezone.utc)
    cert = (
        x509.CertificateBuilder()
        .subject_name(subject)
        .issuer_name(subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW_ALLOWANCE)
        .not_valid_after(now + _dt.timedelta(days=validity_days))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=False, content_commitment=False, key_encipherment=False,
                data_encipherment=False, key_agreement=False, key_cert_sign=True, crl_sign=True,
                encipher_only=False, decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, None)
    )
    _write_private(key_path, _private_pem(key))
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    return cert_path


def issue_node_certificate(
    ca_dir: Path,
    data_dir: Path,
    *,
    validity_days: int = NODE_VALIDITY_DAYS_DEFAULT,
    hosts: Sequence[str] = (),
    now: _dt.datetime | None = None,
) -> str:
    """Issue (or re-issue) a node certificate into `data_dir`; returns the node id.

    An existing ``node.key`` is reused, so re-issuing (renewal, new hosts) keeps the node id.
    `now` exists so tests can issue already-expired certificates; leave it unset otherwise.
    """
    if validity_days <= 0:
        raise IdentityError(f"certificate validity must be at least one day, got {validity_days}")
    ca_dir, data_dir = Path(ca_dir), Path(data_dir)
    ca_key = _load_private_key(ca_dir / CA_KEY_FILE, f"no CA key in {ca_dir}; run `agentnode ca init --dir {ca_dir}` first")
    ca_cert = _load_certificate(ca_dir / CA_CERT_FILE, f"no CA certificate in {ca_dir}; run `agentnode ca init --dir {ca_dir}` first")
    data_dir.mkdir(parents=True, exist_ok=True)
    key_path = data_dir / NODE_KEY_FILE
    if key_path.exists():
        key = _load_private_key(key_path, "")
    else:
        key = Ed25519PrivateKey.generate()
        _write_private(key_path, _private_pem(key))
    node_id = node_id_from_public_key(key.public_key())
    if now is None:
        now = _dt.datetime.now(_dt.timezone.utc)
    sans: list[x509.GeneralName] = [x509.DNSName(node_id)]
    for host in hosts:
        sans.append(_general_name(host))
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, node_id)]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - CLOCK_SKEW_ALLOWANCE)
        .not_valid_after(now + _dt.timedelta(days=validity_days))
        .add_extension(x509.SubjectAlternativeName(sans), critical=False)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.ExtendedKeyUsage([x509.oid.ExtendedKeyUsageOID.SERVER_AUTH, x509.oid.ExtendedKeyUsageOID.CLIENT_AUTH]),
            critical=False,
        )
        .sign(ca_key, None)
    )
    (data_dir / NODE_CERT_FILE).write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    (data_dir / CA_CERT_FILE).write_bytes(ca_cert.public_bytes(serialization.Encoding.PEM))
    return node_id


@dataclass(frozen=True, slots=True)
class NodeIdentity:
    """A node's identity files, checked to belong together. Build with `NodeIdentity.load(data_dir)`."""

    node_id: str
    data_dir: Path
    key_path: Path
    cert_path: Path
    ca_path: Path

    @classmethod
    def load(cls, data_dir: Path) -> NodeIdentity:
        """Load and cross-check key, certificate and CA in `data_dir`; raise `IdentityError` saying what to run."""
        data_dir = Path(data_dir)
        hint = f"run `agentnode ca issue --ca-dir CA_DIR --data-dir {data_dir}`"
        key = _load_private_key(data_dir / NODE_KEY_FILE, f"no node key in {data_dir}; {hint}")
        cert = _load_certificate(data_dir / NODE_CERT_FILE, f"no node certificate in {data_dir}; {hint}")
        ca = _load_certificate(data_dir / CA_CERT_FILE, f"no CA certificate in {data_dir}; {hint}")
        node_id = node_id_from_public_key(key.public_key())
        if cert.public_key() != key.public_key():
            raise IdentityError(f"{data_dir / NODE_CERT_FILE} does not belong to {data_dir / NODE_KEY_FILE}; {hint}")
        try:
            node_id_from_certificate(cert)
            cert.verify_directly_issued_by(ca)
        except (PeerRefused, ValueError, TypeError, InvalidSignature) as exc:
            raise IdentityError(f"{data_dir / NODE_CERT_FILE} is not a valid certificate from {data_dir / CA_CERT_FILE} ({exc}); {hint}") from None
        return cls(node_id, data_dir, data_dir / NODE_KEY_FILE, data_dir / NODE_CERT_FILE, data_dir / CA_CERT_FILE)

    def private_key(self) -> Ed25519PrivateKey:
        return _load_private_key(self.key_path, f"node key {self.key_path} disappeared")

    def certificate(self) -> x509.Certificate:
        return _load_certificate(self.cert_path, f"node certificate {self.cert_path} disappeared")

    def ca_certificate(self) -> x509.Certificate:
        return _load_certificate(self.ca_path, f"CA certificate {self.ca_path} disappeared")

    def sign(self, data: bytes) -> bytes:
        """Ed25519 signature of `data` with the node key (for in-channel challenges)."""
        return self.private_key().sign(data)


def _general_name(host: str) -> x509.GeneralName:
    try:
        return x509.IPAddress(ipaddress.ip_address(host))
    except ValueError:
        return x509.DNSName(host)


def _private_pem(key: Ed25519PrivateKey) -> bytes:
    return key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())


def _write_private(path: Path, data: bytes) -> None:
    """Write a secret with mode 0600 from the start (no window where it is world-readable)."""
    tmp = path.with_name(path.name + ".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    try:
        os.write(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)
    os.replace(tmp, path)


def _load_private_key(path: Path, missing: str) -> Ed25519PrivateKey:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise IdentityError(missing or f"{path} not found") from None
    except OSError as exc:
        raise IdentityError(f"cannot read {path}: {exc.strerror}") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise IdentityError(f"{path} is not an unencrypted PEM private key ({exc})") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise IdentityError(f"{path} holds a {type(key).__name__}; agentnode keys are Ed25519")
    return key


def _load_certificate(path: Path, missing: str) -> x509.Certificate:
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise IdentityError(missing) from None
    except OSError as exc:
        raise IdentityError(f"cannot read {path}: {exc.strerror}") from None
    try:
        return x509.load_pem_x509_certificate(data)
    except ValueError as exc:
        raise IdentityError(f"{path} is not a PEM certificate ({exc})") from None
