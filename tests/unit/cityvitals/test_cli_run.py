"""`cityvitals run`: the command line around the distributed roles (no servers here;
the roles themselves run in tests/integration/test_distributed_*)."""

from __future__ import annotations

from click.testing import CliRunner

from cityvitals.citygen import generate_city
from cityvitals.cli import main


def _config(tmp_path, body: str = "") -> str:
    generate_city(nodes=20, districts=2, seed=1).dump(tmp_path / "city.csv")
    path = tmp_path / "cityvitals.toml"
    path.write_text('registry = "city.csv"\n[kafka]\nbootstrap = ["k1:9092"]\n' + body)
    return str(path)


def test_check_says_what_each_role_would_use(tmp_path):
    result = CliRunner().invoke(
        main, ["run", "--config", _config(tmp_path), "--role", "gateway", "--check"]
    )
    assert result.exit_code == 0, result.output
    assert "roles gateway;" in result.output
    assert "Kafka k1:9092 (8 partitions, topics cityvitals.readings" in result.output


def test_a_config_mistake_names_the_file_the_key_and_the_expectation(tmp_path):
    config = _config(tmp_path, "[gateway]\nmax_unacked = 0\n")
    result = CliRunner().invoke(main, ["run", "--config", config, "--check"])
    assert result.exit_code == 1
    assert f"{config}: gateway.max_unacked: expected" in result.output


def test_an_unknown_role_is_refused_with_the_choices():
    result = CliRunner().invoke(main, ["run", "--role", "router"])
    assert result.exit_code == 2
    assert "'gateway', 'stream', 'alerts', 'all'" in result.output


def test_check_reads_the_registry_too(tmp_path):
    config = _config(tmp_path)
    (tmp_path / "city.csv").write_text("node,kind\nwl-1,water_level\n")
    result = CliRunner().invoke(main, ["run", "--config", config, "--check"])
    assert result.exit_code == 1
    assert "city.csv" in result.output


def test_gateway_and_stream_are_shortcuts_for_their_role(tmp_path):
    config = _config(tmp_path)
    for command in ("gateway", "stream"):
        result = CliRunner().invoke(main, [command, "--config", config, "--check"])
        assert result.exit_code == 0, result.output
        assert f"roles {command};" in result.output


def test_check_reads_the_rule_file_and_names_its_mistake(tmp_path):
    """`run --check` loads `[stream] rules` too: a good file is counted, a bad one is
    refused naming the rule file, the rule and the field."""
    config = _config(tmp_path, '[stream]\nrules = "rules.toml"\n')
    rules = tmp_path / "rules.toml"
    rules.write_text(
        '[[rule]]\nname = "d"\ntype = "threshold"\nkind = "water_level"\n'
        'metric = "depth_cm"\nlevels = { red = 50 }\n'
    )
    result = CliRunner().invoke(main, ["run", "--config", config, "--check"])
    assert result.exit_code == 0, result.output
    assert f"rules {rules} (1)" in result.output
    rules.write_text(rules.read_text().replace("depth_cm", "depth"))
    result = CliRunner().invoke(main, ["run", "--config", config, "--check"])
    assert result.exit_code == 1
    assert f'{rules}: rule[0].metric (rule "d"): expected a metric of water_level' in result.output


def test_rules_check_lists_what_a_file_would_run(tmp_path):
    result = CliRunner().invoke(main, ["rules", "check"])
    assert result.exit_code == 0, result.output
    assert "built-in rules: 8 rules" in result.output
    assert "water_level.depth: threshold on water_level.depth_cm" in result.output
    assert (
        "water_level.district_flooding: area, at least 3 of a district's water_level nodes at "
        "yellow or above by water_level.depth"
    ) in result.output
