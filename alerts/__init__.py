"""Alerts: warnings from the stream become alerts, and alerts reach people.

Small pieces, composed in `AlertService` (Alertmanager style):

- `alerts.model`: `Alert` and `Notification` (the webhook body, schema v1).
- `alerts.book`: the lifecycle, pure: `AlertBook.apply(warning) -> Notification | None`.
- `alerts.notify`: the `Notifier` protocol and the console and webhook receivers.
- `alerts.service`: queue, worker, retries with backoff, delivery reports.

Incidents, routing, escalation, silences and the outbox will come as further
modules between the book and the notifiers.
"""

from alerts.book import AlertBook
from alerts.model import Alert, Notification, decode_notification, notification_id
from alerts.notify import ConsoleNotifier, Notifier, WebhookNotifier, format_line
from alerts.service import AlertService, AlertStats

__all__ = [
    "Alert",
    "AlertBook",
    "AlertService",
    "AlertStats",
    "ConsoleNotifier",
    "Notification",
    "Notifier",
    "WebhookNotifier",
    "decode_notification",
    "format_line",
    "notification_id",
]
