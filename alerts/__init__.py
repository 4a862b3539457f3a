"""Alerts: warnings from the stream become alerts, and alerts reach people.

Small pieces, composed in `AlertService` (Alertmanager style):

- `alerts.model`: `Alert` and `Notification` (the webhook body, schema v1).
- `alerts.book`: the lifecycle, pure: `AlertBook.apply(warning) -> Notification | None`.
- `alerts.store`: the book and the notification outbox in SQLite, so a restart
  resumes what is owed under the same keys (docs/alerts.md).
- `alerts.notify`: the `Notifier` protocol and the console and webhook receivers.
- `alerts.signing`: HMAC-SHA256 webhook signatures, and the receiver's check.
- `alerts.service`: queue, worker, retries with backoff, fallback, delivery reports.

Incidents, routing, escalation and silences will come as further modules
between the book and the notifiers.
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
