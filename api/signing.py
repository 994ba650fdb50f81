"""Plan signatures: Ed25519 over the exact bytes the planner publishes, bound to the subject.

Guarantees:
- A signature covers a fixed context string, the subject and the body exactly as published (never a
  re-serialisation). The plan's cluster, epoch and sequence are inside the body, so none of them can be changed,
  and a plan cannot be moved to another cluster's subject, without breaking the signature.
- A signature names its key (`kid`, derived from the public key, so it cannot disagree with it): appliers accept
  a set of keys, which is how keys rotate without downtime (accept old and new, switch the planner, drop the old).
- `verify` answers with the reason a message is not to be trusted (unsigned, unknown key, bad signature), or None.
- Key material round-trips through text: the private key as PKCS#8 PEM (a file or Secret on the hub only), public
  keys as ``ed25519:<base64>`` (settings and chart values).
Pure: functions over bytes and key material; no files, no clock, no bus.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

KEY_ID_HEADER = "Llm-Operator-Key-Id"
SIGNATURE_HEADER = "Llm-Operator-Signature"
_CONTEXT = b"llm-operator-plan/v1\n"
_PUBLIC_PREFIX = "ed25519:"


class InvalidKey(ValueError):
    """Key material that cannot be used; the message says which and why (never the key itself)."""


def signed_bytes(subject: str, body: bytes) -> bytes:
    """What a signature covers: the context, the subject and the body as published."""
    return _CONTEXT + subject.encode() + b"\n" + body


def _raw(public: Ed25519PublicKey) -> bytes:
    return public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def key_id(public: Ed25519PublicKey) -> str:
    """A short, stable name of a public key (the first 16 hex digits of its SHA-256)."""
    return hashlib.sha256(_raw(public)).hexdigest()[:16]


@dataclass(frozen=True)
class PlanSigner:
    """The planner's signing key."""

    key: Ed25519PrivateKey

    @property
    def kid(self) -> str:
        return key_id(self.key.public_key())

    @property
    def public_key(self) -> str:
        """The public key as settings and chart values take it."""
        return public_key_text(self.key.public_key())

    def headers(self, subject: str, body: bytes) -> dict[str, str]:
        """The NATS headers that carry the signature of `body` published on `subject`."""
        signature = self.key.sign(signed_bytes(subject, body))
        return {KEY_ID_HEADER: self.kid, SIGNATURE_HEADER: base64.b64encode(signature).decode()}


def generate_private_key() -> bytes:
    """A new private key, as unencrypted PKCS#8 PEM (keep it in a file readable only by the planner, or a Secret)."""
    return Ed25519PrivateKey.generate().private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def load_signer(pem: bytes) -> PlanSigner:
    try:
        key = serialization.load_pem_private_key(pem, password=None)
    except (ValueError, TypeError) as exc:
        raise InvalidKey("not an unencrypted PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise InvalidKey(f"not an Ed25519 key ({type(key).__name__})")
    return PlanSigner(key)


def public_key_text(public: Ed25519PublicKey) -> str:
    return _PUBLIC_PREFIX + base64.b64encode(_raw(public)).decode()


def parse_public_key(text: str) -> Ed25519PublicKey:
    """A public key from ``ed25519:<base64 of the 32 raw bytes>``."""
    text = text.strip()
    if not text.startswith(_PUBLIC_PREFIX):
        raise InvalidKey(f"a public key must look like {_PUBLIC_PREFIX}<base64>")
    try:
        raw = base64.b64decode(text.removeprefix(_PUBLIC_PREFIX), validate=True)
        return Ed25519PublicKey.from_public_bytes(raw)
    except (binascii.Error, ValueError) as exc:
        raise InvalidKey("a public key must be 32 bytes of base64 after " + _PUBLIC_PREFIX) from exc


def trusted_keys(texts: Iterable[str]) -> dict[str, Ed25519PublicKey]:
    """Public keys by key id."""
    keys = {}
    for text in texts:
        public = parse_public_key(text)
        keys[key_id(public)] = public
    return keys


def verify(
    keys: Mapping[str, Ed25519PublicKey], subject: str, body: bytes, headers: Mapping[str, str] | None
) -> str | None:
    """None if `body` on `subject` carries a valid signature by one of `keys`; otherwise why not."""
    headers = headers or {}
    kid = headers.get(KEY_ID_HEADER)
    encoded = headers.get(SIGNATURE_HEADER)
    if not kid or not encoded:
        return "unsigned: the plan carries no signature"
    public = keys.get(kid)
    if public is None:
        return f"forged: signed with unknown key {kid[:32]!r}"
    try:
        signature = base64.b64decode(encoded, validate=True)
    except (binascii.Error, ValueError):
        return "forged: the signature is not base64"
    try:
        public.verify(signature, signed_bytes(subject, body))
    except InvalidSignature:
        return f"forged: the signature does not match key {kid}"
    return None
