"""The OpenAPI 3.1 description of the alerts API (`alerts.api`), served at
`/api/v1/openapi.json`. The schemas of `Alert` and `Silence` come from the
structs themselves (msgspec), so the description cannot drift from the bodies.

>>> doc = openapi_document()
>>> doc["openapi"], sorted(doc["paths"])[:2]
('3.1.0', ['/ack', '/api/v1/alerts'])
"""

from __future__ import annotations

from functools import cache
from typing import Any

import msgspec

from alerts.model import Alert
from alerts.silences import LABELS, OPS, Silence

__all__ = ["openapi_document"]

_ERRORS = {
    "400": {"description": "the request is not what this takes; nothing changed"},
    "401": {"description": "no bearer token, or one not known"},
    "403": {"description": "the token's role may not do this"},
}
_ALERT = {"$ref": "#/components/schemas/Alert"}
_SILENCE = {"$ref": "#/components/schemas/Silence"}


def _json_body(schema: dict[str, Any], description: str) -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _path_param(name: str) -> list[dict[str, Any]]:
    return [{"name": name, "in": "path", "required": True, "schema": {"type": "string"}}]


def _op(summary: str, role: str, responses: dict[str, Any], **extra: Any) -> dict[str, Any]:
    return {
        "summary": f"{summary} (role: {role} or above)",
        "security": [{"bearer": []}],
        "responses": {**responses, **_ERRORS},
        **extra,
    }


_SILENCE_REQUEST = {
    "type": "object",
    "required": ["matchers", "reason"],
    "additionalProperties": False,
    "properties": {
        "matchers": {
            "type": "array",
            "minItems": 1,
            "items": {
                "type": "object",
                "required": ["name", "value"],
                "properties": {
                    "name": {"enum": list(LABELS)},
                    "value": {"type": "string"},
                    "op": {"enum": list(OPS), "default": "="},
                },
            },
        },
        "reason": {"type": "string"},
        "starts_ms": {"type": "integer", "description": "default: now"},
        "ends_ms": {"type": "integer", "description": "or duration_s"},
        "duration_s": {"type": "number", "description": "or ends_ms"},
    },
}


@cache
def openapi_document() -> dict[str, Any]:
    (alert, silence), components = msgspec.json.schema_components(
        (Alert, Silence), ref_template="#/components/schemas/{name}"
    )
    not_open = {"404": {"description": "no open alert with this fingerprint"}}
    fingerprint = _path_param("fingerprint")
    return {
        "openapi": "3.1.0",
        "info": {"title": "cityvitals alerts", "version": "1"},
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {"Alert": alert, "Silence": silence, **components},
        },
        "paths": {
            "/api/v1/alerts": {
                "get": _op(
                    "The open alerts, oldest first (state=resolved: the resolved ones not "
                    "yet closed, newest first)",
                    "viewer",
                    {
                        "200": _json_body(
                            {
                                "type": "object",
                                "properties": {"alerts": {"type": "array", "items": _ALERT}},
                            },
                            "the alerts",
                        )
                    },
                    parameters=[
                        {
                            "name": "min_level",
                            "in": "query",
                            "schema": {"enum": ["blue", "yellow", "orange", "red"]},
                        }
                    ],
                )
            },
            "/api/v1/alerts/{fingerprint}": {
                "get": _op(
                    "One open alert",
                    "viewer",
                    {"200": _json_body(_ALERT, "the alert"), **not_open},
                    parameters=fingerprint,
                )
            },
            "/api/v1/alerts/{fingerprint}/acknowledge": {
                "post": _op(
                    "Take the alert on: no reminders until it gets worse",
                    "operator",
                    {"200": _json_body(_ALERT, "the alert after"), **not_open},
                    parameters=fingerprint,
                )
            },
            "/api/v1/alerts/{fingerprint}/resolve": {
                "post": _op(
                    "Resolve it by hand",
                    "operator",
                    {"200": _json_body(_ALERT, "the alert after"), **not_open},
                    parameters=fingerprint,
                )
            },
            "/api/v1/incidents": {
                "get": _op(
                    "Open incidents (related alerts grouped), and the last 100 resolved",
                    "viewer",
                    {"200": {"description": "incidents"}},
                )
            },
            "/api/v1/metrics": {
                "get": _op(
                    "Time to detect, acknowledge and resolve (count, mean, p50, p90, max in "
                    "seconds) by district, kind and peak level",
                    "viewer",
                    {"200": {"description": "the response times"}},
                )
            },
            "/api/v1/alerts/{fingerprint}/close": {
                "post": _op(
                    "Close a resolved alert (done with: off the resolved list)",
                    "operator",
                    {
                        "200": _json_body(_ALERT, "the alert, closed"),
                        "404": {"description": "no resolved alert with this fingerprint"},
                    },
                    parameters=fingerprint,
                )
            },
            "/api/v1/silences": {
                "get": _op("Silences running or to come", "viewer", {"200": {"description": "ok"}}),
                "post": _op(
                    "Silence the alerts the matchers select, for a while",
                    "operator",
                    {"201": _json_body(_SILENCE, "the silence")},
                    requestBody={
                        "required": True,
                        "content": {"application/json": {"schema": _SILENCE_REQUEST}},
                    },
                ),
            },
            "/api/v1/silences/{silence_id}": {
                "delete": _op(
                    "End a silence now",
                    "operator",
                    {
                        "200": _json_body(_SILENCE, "the silence, ended"),
                        "404": {"description": "no such silence running"},
                    },
                    parameters=_path_param("silence_id"),
                )
            },
            "/ack": {
                "get": {
                    "summary": "An acknowledge link (signed, expiring; no token): a page with a "
                    "button, so a chat app's preview acknowledges nothing",
                    "responses": {
                        "200": {"description": "the page"},
                        "403": {"description": "expired, changed or not ours"},
                    },
                },
                "post": {
                    "summary": "Acknowledge through the link",
                    "responses": {
                        "200": _json_body(_ALERT, "the alert after"),
                        "403": {"description": "expired, changed or not ours"},
                        "409": {"description": "no longer open"},
                    },
                },
            },
        },
    }
