"""One error tree for the whole project.

Every error raised on purpose by cityvitals derives from `CityvitalsError`,
so a service loop can tell "our own, expected, reportable" from a bug.
Errors carry the fields an operator needs as attributes, not only in text.
"""

from __future__ import annotations

from pathlib import Path


class CityvitalsError(Exception):
    """Root of every error cityvitals raises on purpose."""


class ContractError(CityvitalsError):
    """A message does not satisfy the contract.

    `reason` is a short stable code (see `cityvitals.contract.Reason`) that
    dead-letter records and metrics group by; `detail` is for humans.
    """

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


class ConfigError(CityvitalsError):
    """A configuration or registry file is wrong.

    The message names the file, the key (or line) and what was expected, so
    an installer can fix it without reading code.
    """

    def __init__(self, path: Path | str, key: str, expected: str, *, found: object = None) -> None:
        self.path = Path(path)
        self.key = key
        self.expected = expected
        self.found = found
        got = "" if found is None else f", found {found!r}"
        super().__init__(f"{self.path}: {key}: expected {expected}{got}")


class DeliveryError(CityvitalsError):
    """A notification could not be delivered.

    `retryable` says whether trying again can help (a 503 can, a 400 cannot).
    """

    def __init__(self, receiver: str, detail: str, *, retryable: bool) -> None:
        super().__init__(f"{receiver}: {detail}")
        self.receiver = receiver
        self.detail = detail
        self.retryable = retryable
