"""Push the folder, the InfluxDB data source and every dashboard to a running Grafana.

Through grafana-client, with a service account token (Editor, or Admin for
the data source). Idempotent: the folder and the data source are found by
their uids and created or updated to what they should be; every dashboard
is written with `overwrite`, so running it twice leaves Grafana as running
it once did. For a Grafana started with deploy/compose.yaml, file
provisioning (deploy/grafana/provisioning) does the same at start and this
is not needed.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from typing import Any, Final

from grafana_client.api import GrafanaApi
from grafana_client.client import GrafanaClientError, GrafanaException

from cityvitals.dashboards.files import as_json
from cityvitals.dashboards.flux import DATASOURCE_UID
from cityvitals.errors import CityvitalsError

__all__ = ["FOLDER_UID", "InfluxSource", "ProvisionError", "Provisioned", "provision"]

log = logging.getLogger(__name__)

FOLDER_UID: Final = "cityvitals"
FOLDER_TITLE: Final = "cityvitals"


class ProvisionError(CityvitalsError):
    """Grafana refused a step; the message says which, and what Grafana said."""


@dataclass(frozen=True, slots=True)
class InfluxSource:
    """The InfluxDB 2 the dashboards read (Flux), as Grafana should reach it."""

    url: str
    org: str = "cityvitals"
    bucket: str = "cityvitals"
    token: str = field(default="", repr=False)

    def body(self) -> dict[str, Any]:
        return {
            "uid": DATASOURCE_UID,
            "name": "cityvitals InfluxDB",
            "type": "influxdb",
            "access": "proxy",
            "url": self.url,
            "jsonData": {
                "version": "Flux",
                "organization": self.org,
                "defaultBucket": self.bucket,
            },
            "secureJsonData": {"token": self.token},
        }


@dataclass(frozen=True, slots=True)
class Provisioned:
    folder: str  # "created" or "updated"
    datasource: str | None  # "created", "updated" or None (not asked for)
    dashboards: tuple[str, ...]


def provision(
    api: GrafanaApi, *, source: InfluxSource | None = None, folder_title: str = FOLDER_TITLE
) -> Provisioned:
    """Folder, data source (when `source` is given), then every dashboard into the folder."""
    grafana: Any = api  # grafana-client's methods are untyped
    folder = _step("the folder", lambda: _folder(grafana, folder_title))
    datasource = (
        None if source is None else _step("the data source", lambda: _source(grafana, source))
    )
    uids = []
    for uid, board in as_json().items():
        body = {
            "dashboard": {**board, "id": None},
            "folderUid": FOLDER_UID,
            "overwrite": True,
            "message": "cityvitals grafana provision",
        }
        _step(f"dashboard {uid}", lambda body=body: grafana.dashboard.update_dashboard(body))
        uids.append(uid)
    log.info("grafana: folder %s, data source %s, %d dashboards", folder, datasource, len(uids))
    return Provisioned(folder, datasource, tuple(uids))


def _folder(api: Any, title: str) -> str:
    try:
        current = api.folder.get_folder(FOLDER_UID)
    except GrafanaClientError as exc:
        if exc.status_code != 404:
            raise
        api.folder.create_folder(title, uid=FOLDER_UID)
        return "created"
    if current.get("title") != title:
        api.folder.update_folder(FOLDER_UID, title=title, overwrite=True)
    return "updated"


def _source(api: Any, source: InfluxSource) -> str:
    try:
        api.datasource.get_datasource_by_uid(DATASOURCE_UID)
    except GrafanaClientError as exc:
        if exc.status_code != 404:
            raise
        api.datasource.create_datasource(source.body())
        return "created"
    api.datasource.update_datasource_by_uid(DATASOURCE_UID, source.body())
    return "updated"


def _step(what: str, do: Any) -> Any:
    try:
        return do()
    except GrafanaException as exc:
        raise ProvisionError(f"grafana refused {what}: {exc}") from exc
    except OSError as exc:
        raise ProvisionError(f"cannot reach grafana for {what}: {exc}") from exc
