"""Options more than one command module of the CLI takes."""

from __future__ import annotations

from pathlib import Path

import click

SERVICE_CONFIG = click.option(
    "--config",
    "config_path",
    type=click.Path(dir_okay=False, path_type=Path),
    default=Path("/etc/cityvitals/cityvitals.toml"),
    show_default=True,
    help="The service config, one file for every role (example: deploy/cityvitals.toml).",
)


def secret(value: str | None, path: Path | None, what: str, *, given_by: str) -> str:
    """A token or password: the file's (first choice), else `value` (an option or an
    environment variable). Empty or unreadable is a clear error naming it."""
    if path is not None:
        try:
            value = path.read_text(encoding="utf-8").strip()
        except OSError as exc:
            raise click.ClickException(f"{path}: cannot read the {what}: {exc}") from exc
        if not value:
            raise click.ClickException(f"{path}: the file is empty; it should hold the {what}")
    if not value:
        raise click.UsageError(f"the {what} is needed: {given_by}")
    return value.strip()
