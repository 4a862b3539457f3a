"""A receiver from its `[[alerts.webhook]]` settings: the JSON webhook or a chat bot."""

from __future__ import annotations

from typing import TYPE_CHECKING, cast

from alerts.chat import ChatNotifier, ChatStyle
from alerts.notify import Notifier, WebhookNotifier

if TYPE_CHECKING:
    import aiohttp

    from cityvitals.settings import WebhookSettings


def receiver(settings: WebhookSettings, session: aiohttp.ClientSession) -> Notifier:
    """The notifier `settings` describe, sharing `session` with the others."""
    if settings.format == "json":
        return WebhookNotifier(
            settings.url,
            session,
            timeout=settings.timeout_s,
            name=settings.name,
            secrets=settings.secrets,
            rate_per_minute=settings.rate_per_minute,
            concurrency=settings.concurrency,
        )
    secret = settings.secrets[0].decode() if settings.secrets else None
    return ChatNotifier(
        settings.url,
        session,
        style=cast("ChatStyle", settings.format),
        name=settings.name,
        secret=secret,
        timeout=settings.timeout_s,
        rate_per_minute=settings.rate_per_minute,
    )
