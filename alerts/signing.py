"""Webhook signatures: HMAC-SHA256 over the timestamp and the body. Pure.

A receiver with the shared secret can check that a notification came from
this pipeline, unchanged, and recently: the signed text is
``"<timestamp>.<body>"``, so a body cannot be replayed under a new
timestamp, and a receiver refuses timestamps outside its tolerance (five
minutes by default). Replays inside that window carry the notification's
idempotency key, which the receiver drops as a duplicate.

Headers (the scheme is versioned, as Stripe's and Slack's are, so a second
one can be added while receivers move over):

``X-Cityvitals-Timestamp``
    Unix seconds when the request was signed (each attempt is signed anew).
``X-Cityvitals-Signature``
    ``v1=`` and the lower-case hex HMAC-SHA256 of ``"<timestamp>.<body>"``
    under the secret. Several signatures, comma-separated, are allowed
    (during a secret rotation both are sent); one match is enough.

>>> secret = b"s3cret"
>>> headers = sign(secret, b'{"v":1}', now_s=1_764_028_800)
>>> headers["X-Cityvitals-Timestamp"]
'1764028800'
>>> verify(secret, b'{"v":1}', headers["X-Cityvitals-Timestamp"],
...        headers["X-Cityvitals-Signature"], now_s=1_764_028_860)
>>> verify(secret, b'{"v":2}', headers["X-Cityvitals-Timestamp"],
...        headers["X-Cityvitals-Signature"], now_s=1_764_028_860)
Traceback (most recent call last):
...
alerts.signing.SignatureError: the signature does not match the body
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Sequence
from typing import Final

__all__ = ["SCHEME", "SignatureError", "sign", "signature", "verify"]

SCHEME: Final = "v1"
TIMESTAMP_HEADER: Final = "X-Cityvitals-Timestamp"
SIGNATURE_HEADER: Final = "X-Cityvitals-Signature"
#: How far a receiver lets a timestamp be from its own clock, by default.
TOLERANCE_S: Final = 300


class SignatureError(ValueError):
    """A request whose signature is missing, malformed, stale or wrong."""


def signature(secret: bytes, body: bytes, timestamp: str) -> str:
    """The hex HMAC-SHA256 of ``"<timestamp>.<body>"`` under `secret`."""
    return hmac.new(secret, timestamp.encode("ascii") + b"." + body, hashlib.sha256).hexdigest()


def sign(secret: bytes | Sequence[bytes], body: bytes, *, now_s: int) -> dict[str, str]:
    """The signature headers for one request; several secrets give several signatures."""
    secrets = [secret] if isinstance(secret, bytes) else list(secret)
    if not secrets or any(not s for s in secrets):
        raise ValueError("a webhook secret must not be empty")
    timestamp = str(now_s)
    value = ",".join(f"{SCHEME}={signature(s, body, timestamp)}" for s in secrets)
    return {TIMESTAMP_HEADER: timestamp, SIGNATURE_HEADER: value}


def verify(
    secret: bytes,
    body: bytes,
    timestamp: str | None,
    header: str | None,
    *,
    now_s: float,
    tolerance_s: float = TOLERANCE_S,
) -> None:
    """Check a request as a receiver would; `SignatureError` saying what is wrong."""
    if not timestamp or not header:
        raise SignatureError("the timestamp or signature header is missing")
    if not timestamp.isdigit():
        raise SignatureError(f"the timestamp {timestamp[:20]!r} is not Unix seconds")
    if abs(now_s - int(timestamp)) > tolerance_s:
        raise SignatureError(
            f"the timestamp is {now_s - int(timestamp):+.0f} s from now "
            f"(more than {tolerance_s:g} s): stale or replayed"
        )
    expected = signature(secret, body, timestamp)
    offered = [p.strip().partition("=") for p in header.split(",")]
    if not any(scheme == SCHEME for scheme, _, _ in offered):
        raise SignatureError(f"no {SCHEME}= signature in the header")
    if not any(
        scheme == SCHEME and hmac.compare_digest(value, expected) for scheme, _, value in offered
    ):
        raise SignatureError("the signature does not match the body")
