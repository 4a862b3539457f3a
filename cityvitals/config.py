"""Settings shared by every service: how to reach the MQTT broker.

Frozen dataclasses, parsed once at the edge of the program; the services take
them ready-made.
"""

from __future__ import annotations

import ssl
from dataclasses import dataclass, field
from urllib.parse import unquote, urlsplit

from cityvitals.errors import CityvitalsError


class BrokerUrlError(CityvitalsError, ValueError):
    """A broker URL that is not `mqtt://host[:port]` or `mqtts://host[:port]`."""


@dataclass(frozen=True, slots=True)
class BrokerSettings:
    """Where and how to reach the MQTT broker."""

    host: str = "127.0.0.1"
    port: int = 1883
    username: str | None = None
    password: str | None = field(default=None, repr=False)
    tls: ssl.SSLContext | None = None
    keepalive: int = 30

    @classmethod
    def from_url(cls, url: str) -> BrokerSettings:
        """Parse `mqtt://[user:pass@]host[:port]` or `mqtts://...` (TLS).

        >>> BrokerSettings.from_url("mqtt://ops:pw@10.0.0.5:1884")
        BrokerSettings(host='10.0.0.5', port=1884, username='ops', tls=None, keepalive=30)
        """
        parts = urlsplit(url)
        if parts.scheme not in ("mqtt", "mqtts") or not parts.hostname:
            raise BrokerUrlError(f"expected mqtt://host[:port] or mqtts://host[:port], got {url!r}")
        try:
            port = parts.port
        except ValueError:  # not a number, or above 65535
            raise BrokerUrlError(
                f"expected mqtt://host[:port] with a port 1..65535, got {url!r}"
            ) from None
        secure = parts.scheme == "mqtts"
        return cls(
            host=parts.hostname,
            port=port or (8883 if secure else 1883),
            username=unquote(parts.username) if parts.username else None,
            password=unquote(parts.password) if parts.password else None,
            tls=ssl.create_default_context() if secure else None,
        )
