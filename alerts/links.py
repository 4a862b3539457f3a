"""Acknowledge links: signed, expiring URLs inside notifications. Pure.

A link names the alert (its fingerprint) and when it stops working, and
carries an HMAC-SHA256 over both under the API's link secret, so whoever
holds the link can acknowledge that one alert until then, and nothing else:
changing the fingerprint or the expiry breaks the signature.

Opening the link (GET) shows a page with a button; only the button (POST)
acknowledges. Chat apps open links to preview them, and a preview must not
acknowledge a page nobody has read.

>>> from urllib.parse import parse_qsl, urlsplit
>>> link = ack_link("https://alerts.city.example", b"k", "fp-1", expires_s=1_764_030_000)
>>> link.split("&sig=")[0]
'https://alerts.city.example/ack?fp=fp-1&exp=1764030000'
>>> query = dict(parse_qsl(urlsplit(link).query))
>>> check_ack(b"k", query, now_s=1_764_029_000)
'fp-1'
>>> check_ack(b"k", {**query, "fp": "fp-2"}, now_s=1_764_029_000)
Traceback (most recent call last):
...
alerts.links.LinkError: this acknowledge link has been changed or is not ours
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from urllib.parse import urlencode

__all__ = ["LinkError", "ack_link", "check_ack"]


class LinkError(ValueError):
    """An acknowledge link that is malformed, expired or not ours."""


def _sig(secret: bytes, fingerprint: str, expires_s: int) -> str:
    text = f"ack.{fingerprint}.{expires_s}".encode()
    return hmac.new(secret, text, hashlib.sha256).hexdigest()


def ack_link(base_url: str, secret: bytes, fingerprint: str, *, expires_s: int) -> str:
    """The link that acknowledges `fingerprint` until `expires_s` (Unix seconds)."""
    sig = _sig(secret, fingerprint, expires_s)
    query = urlencode({"fp": fingerprint, "exp": expires_s, "sig": sig})
    return f"{base_url.rstrip('/')}/ack?{query}"


def check_ack(secret: bytes, query: Mapping[str, str], *, now_s: float) -> str:
    """The fingerprint a link acknowledges; `LinkError` saying what is wrong with it."""
    fingerprint, expires, sig = query.get("fp", ""), query.get("exp", ""), query.get("sig", "")
    if not fingerprint or not expires.isdigit() or not sig:
        raise LinkError("this is not a whole acknowledge link (fp, exp and sig are needed)")
    if not hmac.compare_digest(sig, _sig(secret, fingerprint, int(expires))):
        raise LinkError("this acknowledge link has been changed or is not ours")
    if now_s >= int(expires):
        raise LinkError("this acknowledge link has expired; acknowledge in the console instead")
    return fingerprint
