"""Identity: node ids, CA and node certificates, and peer certificate checks."""

from __future__ import annotations

import datetime as dt
import re
import stat
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.x509.oid import NameOID

from agentnode.transport.base import PeerRefused
from agentnode.transport.identity import (
    IdentityError,
    NodeIdentity,
    create_ca,
    issue_node_certificate,
    node_id_from_certificate,
    node_id_from_public_key,
    verify_peer_certificate,
)

NOW = dt.datetime.now(dt.timezone.utc)


def _der(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.DER)


def test_node_id_shape_and_known_vector() -> None:
    key = Ed25519PrivateKey.from_private_bytes(bytes(32)).public_key()
    node_id = node_id_from_public_key(key)
    assert re.fullmatch(r"[a-z2-7]{20}", node_id)
    # SHA-256 of the raw public key of the all-zero seed, first 100 bits, base32.
    import hashlib

    raw = key.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    bits = bin(int.from_bytes(hashlib.sha256(raw).digest(), "big"))[2:].zfill(256)[:100]
    alphabet = "abcdefghijklmnopqrstuvwxyz234567"
    assert node_id == "".join(alphabet[int(bits[i : i + 5], 2)] for i in range(0, 100, 5))


def test_issue_and_load(tmp_path: Path) -> None:
    issued_at = dt.datetime.now(dt.timezone.utc)
    create_ca(tmp_path / "ca")
    assert stat.S_IMODE((tmp_path / "ca" / "ca.key").stat().st_mode) == 0o600
    node_id = issue_node_certificate(tmp_path / "ca", tmp_path / "n", hosts=["127.0.0.1", "node.example"])
    assert stat.S_IMODE((tmp_path / "n" / "node.key").stat().st_mode) == 0o600
    ident = NodeIdentity.load(tmp_path / "n")
    assert ident.node_id == node_id
    cert = ident.certificate()
    assert node_id_from_certificate(cert) == node_id
    san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert node_id in san.get_values_for_type(x509.DNSName)
    assert "node.example" in san.get_values_for_type(x509.DNSName)
    assert cert.not_valid_before_utc < issued_at - dt.timedelta(minutes=4)  # margin for peers' clock skew
    # re-issuing keeps the key and therefore the id
    assert issue_node_certificate(tmp_path / "ca", tmp_path / "n", validity_days=2) == node_id
    sig = ident.sign(b"challenge")
    ident.certificate().public_key().verify(sig, b"challenge")  # type: ignore[union-attr]


def test_create_ca_refuses_to_overwrite(tmp_path: Path) -> None:
    create_ca(tmp_path)
    with pytest.raises(IdentityError, match="refusing to overwrite"):
        create_ca(tmp_path)


def test_load_errors_say_what_to_run(tmp_path: Path) -> None:
    with pytest.raises(IdentityError, match="agentnode ca issue"):
        NodeIdentity.load(tmp_path / "missing")
    with pytest.raises(IdentityError, match="agentnode ca init"):
        issue_node_certificate(tmp_path / "noca", tmp_path / "n")
    # certificate from another node's key
    create_ca(tmp_path / "ca")
    issue_node_certificate(tmp_path / "ca", tmp_path / "a")
    issue_node_certificate(tmp_path / "ca", tmp_path / "b")
    (tmp_path / "a" / "node.crt").write_bytes((tmp_path / "b" / "node.crt").read_bytes())
    with pytest.raises(IdentityError, match="does not belong"):
        NodeIdentity.load(tmp_path / "a")
    # CA copy from another cluster
    create_ca(tmp_path / "ca2")
    (tmp_path / "b" / "ca.crt").write_bytes((tmp_path / "ca2" / "ca.crt").read_bytes())
    with pytest.raises(IdentityError, match="not a valid certificate"):
        NodeIdentity.load(tmp_path / "b")


def test_verify_peer_certificate(tmp_path: Path) -> None:
    create_ca(tmp_path / "ca")
    create_ca(tmp_path / "other")
    node_id = issue_node_certificate(tmp_path / "ca", tmp_path / "n")
    ident = NodeIdentity.load(tmp_path / "n")
    ca = ident.ca_certificate()
    der = _der(ident.certificate())
    assert verify_peer_certificate(der, [], ca, NOW, node_id) == node_id
    assert verify_peer_certificate(der, [], ca, NOW, None) == node_id
    with pytest.raises(PeerRefused, match="expected"):
        verify_peer_certificate(der, [], ca, NOW, "a" * 20)
    with pytest.raises(PeerRefused, match="expired"):
        verify_peer_certificate(der, [], ca, NOW + dt.timedelta(days=400), None)
    with pytest.raises(PeerRefused, match="not valid before"):
        verify_peer_certificate(der, [], ca, NOW - dt.timedelta(days=2), None)  # beyond the one-day back-dating
    other_ca = x509.load_pem_x509_certificate((tmp_path / "other" / "ca.crt").read_bytes())
    with pytest.raises(PeerRefused):
        verify_peer_certificate(der, [], other_ca, NOW, None)
    with pytest.raises(PeerRefused, match="DER"):
        verify_peer_certificate(b"garbage", [], ca, NOW, None)
    with pytest.raises(PeerRefused, match="CA certificate"):
        verify_peer_certificate(_der(ca), [], ca, NOW, None)


def test_certificate_claiming_another_id_is_refused(tmp_path: Path) -> None:
    create_ca(tmp_path / "ca")
    ca_key = serialization.load_pem_private_key((tmp_path / "ca" / "ca.key").read_bytes(), None)
    ca = x509.load_pem_x509_certificate((tmp_path / "ca" / "ca.crt").read_bytes())
    key = Ed25519PrivateKey.generate()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "a" * 20)]))
        .issuer_name(ca.subject)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - dt.timedelta(minutes=5))
        .not_valid_after(NOW + dt.timedelta(days=1))
        .sign(ca_key, None)  # type: ignore[arg-type]
    )
    with pytest.raises(PeerRefused, match="hashes to"):
        node_id_from_certificate(cert)
    with pytest.raises(PeerRefused, match="hashes to"):
        verify_peer_certificate(_der(cert), [], ca, NOW, None)
