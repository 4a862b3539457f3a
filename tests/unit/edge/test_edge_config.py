"""edge.toml: a good file gives a ready config; a bad one, one message naming file, key
and expectation."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from cityvitals.errors import ConfigError
from cityvitals.kinds import Kind
from edge.config import load_edge_config

REPO = Path(__file__).parents[3]

GOOD = """
[agent]
id = "pi-harbour-3"
data_dir = "state"

[mqtt]
url = "mqtt://ops:secret@10.0.0.5:1884"

[queue]
max_mb = 64
max_age_h = 48
when_full = "refuse_new"

[report]
max_silent_s = 600
[report.deadband]
"water_level.depth_cm" = 1.5

[[serial]]
name = "usb0"
port = "/dev/ttyUSB0"
baud = 19200

[[node]]
id = "wl-0001"
kind = "water_level"
serial = "usb0"
fast_interval_s = 5

[[node]]
id = "mh-0001"
kind = "manhole"
simulate = { seed = 3 }
report = false
"""


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "edge.toml"
    path.write_text(text)
    return path


def test_a_good_file_gives_a_ready_config(tmp_path: Path):
    config = load_edge_config(write(tmp_path, GOOD))
    assert config.agent_id == "pi-harbour-3"
    assert config.data_dir == (tmp_path / "state").resolve()
    assert config.queue_path.name == "pi-harbour-3.queue.db"
    assert (config.broker.host, config.broker.port, config.broker.username) == (
        "10.0.0.5",
        1884,
        "ops",
    )
    assert config.broker.password == "secret"
    assert config.queue.max_bytes == 64 * 2**20
    assert config.queue.max_age_s == 48 * 3600
    assert config.queue.when_full == "refuse_new"
    water, manhole = config.nodes
    assert (water.kind, water.serial) == (Kind.WATER_LEVEL, "usb0")
    assert water.report is not None
    assert water.report.metrics["depth_cm"].deadband == 1.5
    assert water.report.metrics["depth_cm"].watch == 8.0  # the default kept
    assert (water.report.fast_interval_s, water.report.max_silent_s) == (5, 600)
    assert manhole.report is None
    assert manhole.simulate is not None
    assert manhole.simulate.seed == 3


def test_the_shipped_example_loads():
    config = load_edge_config(REPO / "deploy" / "edge" / "edge.toml")
    assert config.nodes


@pytest.mark.parametrize(
    ("change", "key", "expected"),
    [
        (('id = "pi-harbour-3"', 'id = "Pi Harbour"'), "agent.id", "lowercase letters"),
        (("baud = 19200", "baud = 12"), "serial[0].baud", ">= 300"),
        (('kind = "manhole"', 'kind = "drain"'), "node[1].kind", "one of crowd, manhole"),
        (('serial = "usb0"', 'serial = "usb9"'), "node[0].serial", "[[serial]] port (usb0)"),
        (('when_full = "refuse_new"', 'when_full = "panic"'), "queue.when_full", "drop_oldest"),
        (("max_mb = 64", "max_mb = -1"), "queue.max_mb", "> 0"),
        (("max_mb = 64", "max_mb = 64\nmax_gb = 1"), "queue.max_gb", "known keys: loss_report_s"),
        (('url = "mqtt://ops', 'url = "http://ops'), "mqtt.url", "mqtt://host"),
        (('"water_level.depth_cm"', '"water.depth"'), "report.deadband", "water_level.depth_cm"),
        (('id = "mh-0001"', 'id = "wl-0001"'), "node[1].id", "a node id used once"),
        (("simulate = { seed = 3 }", ""), "node[1]", "exactly one of serial"),
        (("[agent]", "[agnet]"), "agnet", "known keys: agent, mqtt, node, queue"),
        (('url = "mqtt://', 'uri = "mqtt://'), "mqtt.uri", "known keys"),
        (("baud = 19200", 'baud = "fast"'), "serial[0].baud", "int"),
        (("max_mb = 64", "max_mb = ["), "(syntax)", "valid TOML"),
        (("10.0.0.5:1884", "10.0.0.5:99999"), "mqtt.url", "a port 1..65535"),
        (
            ('"water_level.depth_cm" = 1.5', '"water_level.depth_cm" = "x"'),
            'report.deadband."water_level.depth_cm"',
            "float",
        ),
        (
            ('"water_level.depth_cm" = 1.5', '"water_level.depth_cm" = -1'),
            'report.deadband."water_level.depth_cm"',
            ">= 0",
        ),
        (("fast_interval_s = 5", "fast_interval_s = 600"), "node[0].fast_interval_s", "at most"),
        (('url = "mqtt://ops', 'ca_file = "ca.pem"\nurl = "mqtt://ops'), "mqtt.url", "mqtts://"),
        (
            ('url = "mqtt://ops', 'key_file = "k.pem"\nurl = "mqtts://ops'),
            "mqtt.cert_file",
            "together",
        ),
        (('id = "pi-harbour-3"', f'id = "{"a" * 65}"'), "agent.id", "1 to 64"),
    ],
)
def test_a_mistake_names_the_file_the_key_and_the_expectation(
    tmp_path: Path, change: tuple[str, str], key: str, expected: str
):
    old, new = change
    assert old in GOOD
    path = write(tmp_path, GOOD.replace(old, new, 1))
    with pytest.raises(ConfigError) as caught:
        load_edge_config(path)
    message = str(caught.value)
    assert message.startswith(f"{path}: {key}: expected"), message
    assert expected in message
    assert "\n" not in message  # one line for one mistake


def test_check_storage_names_a_data_dir_the_agent_cannot_use(tmp_path: Path):
    (tmp_path / "state").write_text("a file where the directory should be")
    config = load_edge_config(write(tmp_path, GOOD))
    with pytest.raises(
        ConfigError, match=r"agent.data_dir: expected a directory .*not a directory"
    ):
        config.check_storage()
    (tmp_path / "state").unlink()
    config.check_storage()  # not there yet, but creatable


def test_a_missing_required_section_and_a_missing_file(tmp_path: Path):
    path = write(tmp_path, GOOD.replace('[mqtt]\nurl = "mqtt://ops:secret@10.0.0.5:1884"', ""))
    with pytest.raises(ConfigError, match=r"mqtt: expected a value \(this key is required\)"):
        load_edge_config(path)
    with pytest.raises(ConfigError, match="does not exist"):
        load_edge_config(tmp_path / "nope.toml")


def test_secrets_and_tls_files_are_read_relative_to_the_config(tmp_path: Path):
    (tmp_path / "pw").write_text("s3cret\n")
    text = GOOD.replace(
        'url = "mqtt://ops:secret@10.0.0.5:1884"',
        'url = "mqtts://10.0.0.5"\nusername = "pi"\npassword_file = "pw"',
    )
    config = load_edge_config(write(tmp_path, text))
    assert (config.broker.username, config.broker.password) == ("pi", "s3cret")
    assert config.broker.tls is not None
    assert config.broker.port == 8883
    missing = text.replace('password_file = "pw"', 'password_file = "pw"\nca_file = "ca.pem"')
    with pytest.raises(ConfigError, match=r"mqtt.ca_file: expected a readable PEM CA bundle"):
        load_edge_config(write(tmp_path, missing))


@settings(max_examples=150, deadline=None)
@given(garbage=st.text(st.characters(blacklist_categories=("Cs",)), max_size=300))
def test_garbage_is_a_config_error_never_a_crash(garbage: str):
    """Whatever the file holds, the loader answers with a ConfigError (or a config)."""
    import tempfile

    with tempfile.TemporaryDirectory() as scratch:
        path = Path(scratch) / "edge.toml"
        path.write_text(garbage)
        error: ConfigError | None = None
        try:
            load_edge_config(path)
        except ConfigError as exc:
            error = exc
        assert error is None or str(error).startswith(f"{path}: ")
