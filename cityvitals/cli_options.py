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
