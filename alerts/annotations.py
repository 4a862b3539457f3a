"""Alerts as Grafana annotations, through grafana-client: a receiver like the others.

Each alert is one region annotation, from its start to its resolve, tagged
`cityvitals`, `cv-<fingerprint>`, its kind, its peak level and its district,
with the chat message's text. The first notification of an alert creates it;
the later ones (a level change, the resolve) update it. An attempt first
looks the alert's annotation up by its `cv-` tag, so a retry, a resend after
a restart or a duplicate never makes a second one: Grafana has no idempotency
key, the tag is ours.

It is a `Notifier`, so it goes through the service's lanes, the outbox and
the retries: Grafana down for an hour loses no annotation.
"""

from __future__ import annotations

from typing import Any, Self

from grafana_client.api import AsyncGrafanaApi
from grafana_client.client import (
    GrafanaClientError,
    GrafanaException,
    GrafanaServerError,
    GrafanaTimeoutError,
)

from alerts.chat import message
from alerts.model import Notification
from cityvitals.errors import DeliveryError

__all__ = ["GrafanaAnnotations"]


class GrafanaAnnotations:
    #: A record for the dashboards, not a person: every alert, whatever the routes say.
    always = True

    def __init__(
        self,
        url: str,
        token: str,
        *,
        name: str = "grafana",
        dashboard_uid: str | None = None,
        api: AsyncGrafanaApi | None = None,
    ) -> None:
        self.name = name
        self.dashboard_uid = dashboard_uid
        self._api = api if api is not None else AsyncGrafanaApi.from_url(url, credential=token)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the HTTP session grafana-client opened (niquests')."""
        session: Any = self._api.client.s
        await session.close()

    async def send(self, n: Notification) -> None:
        a = n.alert
        tag = f"cv-{a.fingerprint}"
        title, lines = message(n)
        text = "\n".join([title, *lines])
        tags = ["cityvitals", tag, a.kind.value, a.peak_level.label]
        tags += [a.placement.district] if a.placement.district else []
        try:
            found: Any = await self._api.annotations.find_annotations(tags=[tag], limit=1)
            if found:
                await self._api.annotations.partial_update_annotation(
                    found[0]["id"], time_to=a.resolved_ms, tags=tags, text=text
                )
            else:
                await self._api.annotations.add_annotation(
                    dashboard_uid=self.dashboard_uid,
                    time_from=a.started_ms,
                    time_to=a.resolved_ms,
                    tags=tags,
                    text=text,
                )
        except (GrafanaServerError, GrafanaTimeoutError) as exc:
            raise DeliveryError(self.name, f"Grafana: {exc}", retryable=True) from exc
        except GrafanaClientError as exc:
            # 429 says "later"; any other 4xx (a bad token, a missing dashboard) will not heal.
            retry = getattr(exc, "status_code", None) == 429
            raise DeliveryError(self.name, f"Grafana refused: {exc}", retryable=retry) from exc
        except (GrafanaException, OSError) as exc:
            raise DeliveryError(
                self.name, f"Grafana: {type(exc).__name__}: {exc}", retryable=True
            ) from exc
