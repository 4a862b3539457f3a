"""The command line: help texts, generating a city and checking registry files."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from cityvitals import __version__
from cityvitals.cli import main
from cityvitals.registry import COLUMNS, Registry


@pytest.fixture
def runner() -> CliRunner:
    return CliRunner()


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_top_level_help_lists_the_commands(runner, flag):
    """`cityvitals --help` (and -h) exits 0 and lists the demo and city commands."""
    result = runner.invoke(main, [flag])
    assert result.exit_code == 0, result.output
    assert "demo" in result.output
    assert "city" in result.output
    assert "cityvitals demo" in result.output


def test_version_option(runner):
    """`cityvitals --version` prints the package version."""
    result = runner.invoke(main, ["--version"])
    assert result.exit_code == 0
    assert __version__ in result.output


def test_demo_help_mentions_the_key_options(runner):
    """`cityvitals demo --help` exits 0 without running and documents its main options."""
    result = runner.invoke(main, ["demo", "--help"])
    assert result.exit_code == 0, result.output
    for option in (
        "--duration",
        "--nodes",
        "--districts",
        "--seed",
        "--registry",
        "--mqtt",
        "--webhook",
        "--data-dir",
        "--quiet-day",
    ):
        assert option in result.output


def test_city_help_lists_generate_and_check(runner):
    """`cityvitals city --help` lists both registry subcommands."""
    result = runner.invoke(main, ["city", "--help"])
    assert result.exit_code == 0
    assert "generate" in result.output
    assert "check" in result.output


def test_generate_then_check(runner, tmp_path):
    """`city generate` writes the asked-for city and `city check` accepts it, reporting counts."""
    out = tmp_path / "reg.csv"
    gen = runner.invoke(
        main, ["city", "generate", "--nodes", "40", "--districts", "3", "--out", str(out)]
    )
    assert gen.exit_code == 0, gen.output
    assert gen.output.strip() == f"wrote 40 nodes in 3 districts to {out}"
    registry = Registry.load(out)
    assert len(registry) == 40

    check = runner.invoke(main, ["city", "check", str(out)])
    assert check.exit_code == 0, check.output
    assert check.output.strip() == (
        f"{out}: 40 nodes, 3 districts, crowd 8, manhole 12, smoke 8, water_level 12"
    )


def test_generate_is_deterministic_per_seed(runner, tmp_path):
    """Two runs with the same --seed write byte-identical files; another seed differs."""
    paths = [tmp_path / f"{i}.csv" for i in range(3)]
    for path, seed in zip(paths, ("3", "3", "4"), strict=True):
        result = runner.invoke(
            main,
            [
                "city",
                "generate",
                "--nodes",
                "30",
                "--districts",
                "2",
                "--seed",
                seed,
                "--out",
                str(path),
            ],
        )
        assert result.exit_code == 0, result.output
    assert paths[0].read_bytes() == paths[1].read_bytes() != paths[2].read_bytes()


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--nodes", "10", "--districts", "3"], "need at least 15 nodes"),
        (["--nodes", "3"], "--nodes"),
        (["--districts", "7"], "--districts"),
    ],
)
def test_generate_rejects_impossible_cities(runner, tmp_path, args, needle):
    """Impossible sizes are usage errors (exit 2) that say what is wrong; no file is written."""
    out = tmp_path / "reg.csv"
    result = runner.invoke(main, ["city", "generate", *args, "--out", str(out)])
    assert result.exit_code == 2
    assert needle in result.output
    assert not out.exists()


def test_check_of_a_broken_csv_names_file_and_line(runner, tmp_path):
    """`city check` on a bad row exits 1 with the file, line, column and expectation."""
    path = tmp_path / "broken.csv"
    path.write_text(
        ",".join(COLUMNS) + "\n"
        "wl-0001,water_level,31.2,121.4,Harbour,Dockside Street,HB-101,Drainage\n"
        "sm-0001,smoke,north,121.4,Harbour,Dockside Street,HB-101,Fire\n",
        encoding="utf-8",
    )
    result = runner.invoke(main, ["city", "check", str(path)])
    assert result.exit_code == 1
    assert f"{path}: line 3, column lat: expected a number from -90.0 to 90.0" in result.output
    assert "Traceback" not in result.output


def test_check_of_a_missing_file_names_the_file(runner, tmp_path):
    """`city check` on a file that does not exist exits 1 naming that file."""
    path = tmp_path / "absent.csv"
    result = runner.invoke(main, ["city", "check", str(path)])
    assert result.exit_code == 1
    assert str(path) in result.output
    assert "readable registry CSV" in result.output
