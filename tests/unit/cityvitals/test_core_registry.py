"""The device registry: strict CSV parsing with errors an installer can act on."""

from __future__ import annotations

from pathlib import Path

import pytest

from cityvitals.contract import Placement
from cityvitals.errors import CityvitalsError, ConfigError
from cityvitals.kinds import Kind
from cityvitals.registry import COLUMNS, Device, Registry

HEADER = ",".join(COLUMNS)
ROW_WL = "wl-0001,water_level,31.230400,121.473700,Harbour,Dockside Street,HB-101,Drainage"
ROW_SM = "sm-0001,smoke,31.240000,121.480000,Old Town,Temple Lane Street,OT-102,Fire Brigade"


def csv_text(*rows: str, header: str = HEADER) -> str:
    return "\n".join((header, *rows)) + "\n"


def parse_error(text: str, path: str = "city.csv") -> ConfigError:
    with pytest.raises(ConfigError) as info:
        Registry.parse(text, path=path)
    return info.value


def test_parse_builds_devices_with_placement():
    """A good CSV gives devices by id, with kind, coordinates and a ready Placement."""
    registry = Registry.parse(csv_text(ROW_WL, ROW_SM))
    assert len(registry) == 2
    assert "wl-0001" in registry
    assert "nope" not in registry
    wl = registry.get("wl-0001")
    assert wl is not None
    assert wl.kind is Kind.WATER_LEVEL
    assert (wl.lat, wl.lon) == (31.2304, 121.4737)
    assert registry.placement("sm-0001") == Placement(
        district="Old Town",
        street="Temple Lane Street",
        grid="OT-102",
        unit="Fire Brigade",
        lat=31.24,
        lon=121.48,
    )
    assert registry.get("nope") is None
    assert [d.node for d in registry.by_kind(Kind.SMOKE)] == ["sm-0001"]
    assert registry.by_kind(Kind.CROWD) == []
    assert registry.districts() == ["Harbour", "Old Town"]
    assert [d.node for d in registry] == ["wl-0001", "sm-0001"]


def test_parse_strips_whitespace_and_skips_blank_lines():
    """Fields are trimmed and blank lines ignored, while line numbers stay true to the file."""
    text = csv_text("", " wl-0001 , water_level ,31.2,121.4, Harbour ,S,G,U", "", "bad,kind,,,,,,")
    err = parse_error(text)
    assert err.key == "line 5, column kind"
    registry = Registry.parse(csv_text("", " wl-0001 , water_level ,31.2,121.4, Harbour ,S,G,U"))
    device = registry.get("wl-0001")
    assert device is not None
    assert device.district == "Harbour"


def test_config_error_attributes_and_message():
    """ConfigError keeps path (as a Path), key, expected and found, and says all in its text."""
    err = ConfigError("conf/city.csv", "line 3, column lat", "a number", found="north")
    assert isinstance(err, CityvitalsError)
    assert err.path == Path("conf/city.csv")
    assert (err.key, err.expected, err.found) == ("line 3, column lat", "a number", "north")
    assert str(err) == "conf/city.csv: line 3, column lat: expected a number, found 'north'"
    assert str(ConfigError("f", "k", "x")) == "f: k: expected x"


@pytest.mark.parametrize(
    "header",
    [
        "node,kind,lat,lon,district,street,grid",
        "node,kind,lon,lat,district,street,grid,unit",
        "Node,kind,lat,lon,district,street,grid,unit",
        "",
    ],
)
def test_bad_header_names_line_1_and_the_expected_columns(header):
    """A missing, reordered or renamed header column is reported on line 1 with what we expect."""
    err = parse_error(csv_text(ROW_WL, header=header))
    assert err.path == Path("city.csv")
    assert err.key == "line 1 (header)"
    assert err.expected == HEADER
    assert err.found == header
    assert str(err).startswith("city.csv: line 1 (header): expected node,kind,lat,lon,")


@pytest.mark.parametrize("column", COLUMNS)
def test_empty_field_names_line_and_column(column):
    """An empty (or blank) value in any column is reported with its line and column name."""
    fields = dict(zip(COLUMNS, ROW_WL.split(","), strict=True))
    fields[column] = "  "
    err = parse_error(csv_text(ROW_SM, ",".join(fields.values())))
    assert err.key == f"line 3, column {column}"
    assert err.expected == "a non-empty value"
    assert f"city.csv: line 3, column {column}: expected a non-empty value" == str(err)


def test_short_row_reports_the_first_missing_column():
    """A row with too few fields is reported at the first column it lacks."""
    err = parse_error(csv_text("wl-0001,water_level,31.2,121.4,Harbour,Dockside"))
    assert err.key == "line 2, column grid"


@pytest.mark.parametrize(
    ("column", "value", "expected"),
    [
        ("lat", "north", "a number from -90.0 to 90.0"),
        ("lat", "90.5", "a number from -90.0 to 90.0"),
        ("lat", "nan", "a number from -90.0 to 90.0"),
        ("lon", "-180.01", "a number from -180.0 to 180.0"),
        ("lon", "inf", "a number from -180.0 to 180.0"),
        ("lon", "1e3", "a number from -180.0 to 180.0"),
    ],
)
def test_bad_coordinates_name_the_range_and_the_text_found(column, value, expected):
    """Non-numeric, NaN, infinite or out-of-range lat/lon name the valid range and the text."""
    fields = dict(zip(COLUMNS, ROW_WL.split(","), strict=True))
    fields[column] = value
    err = parse_error(csv_text(",".join(fields.values())))
    assert err.key == f"line 2, column {column}"
    assert err.expected == expected
    assert err.found == value
    assert str(err).endswith(f"found {value!r}")


def test_coordinate_bounds_are_inclusive():
    """The poles and the antimeridian are valid coordinates."""
    registry = Registry.parse(csv_text("a,smoke,-90,180,D,S,G,U", "b,smoke,90,-180,D,S,G,U"))
    assert [(d.lat, d.lon) for d in registry] == [(-90.0, 180.0), (90.0, -180.0)]


def test_unknown_kind_lists_the_valid_kinds():
    """An unknown kind is reported with the four valid kinds and the value found."""
    err = parse_error(csv_text(ROW_WL.replace("water_level", "lamp_post")))
    assert err.key == "line 2, column kind"
    assert err.expected == "one of manhole, water_level, smoke, crowd"
    assert err.found == "lamp_post"
    assert isinstance(err.__cause__, ValueError)


@pytest.mark.parametrize("node", ["WL-0001", "-wl", "wl 1", "wl/1", "w" * 65])
def test_bad_node_id_names_the_pattern(node):
    """A node id the contract would refuse is refused here, with the rule spelled out."""
    err = parse_error(csv_text(ROW_WL.replace("wl-0001", node, 1)))
    assert err.key == "line 2, column node"
    assert "1-64 of a-z, 0-9" in err.expected
    assert err.found == node


def test_duplicate_node_names_the_line_it_was_first_seen_on():
    """A node id used twice is refused on the second line, naming the first."""
    err = parse_error(csv_text(ROW_WL, ROW_SM, ROW_WL.replace("Harbour", "Riverside")))
    assert err.key == "line 4, column node"
    assert "first on line 2" in err.expected
    assert err.found == "wl-0001"
    assert str(err) == (
        "city.csv: line 4, column node: expected a node id not used before "
        "(first on line 2), found 'wl-0001'"
    )


def test_header_only_file_is_refused_for_having_no_rows():
    """A registry with a header and no devices is an error, not an empty city."""
    err = parse_error(csv_text())
    assert (err.key, err.expected) == ("rows", "at least one device")


def test_row_with_an_extra_column_is_refused():
    """A row with more fields than the header is a bad line and must stop the load."""
    with pytest.raises(ConfigError):
        Registry.parse(csv_text(ROW_WL + ",Surplus"))


def test_constructor_refuses_duplicate_devices():
    """Registry built from devices directly refuses a node id registered twice."""
    device = Device(
        node="a", kind=Kind.SMOKE, lat=0.0, lon=0.0, district="D", street="S", grid="G", unit="U"
    )
    with pytest.raises(ValueError, match="registered twice"):
        Registry([device, device])


def test_dump_then_load_round_trips(tmp_path):
    """A registry written with dump() loads back with identical devices and identical CSV."""
    original = Registry.parse(
        csv_text(
            ROW_WL,
            ROW_SM,
            'cr-9,crowd,-33.8688,151.2093,Sydney,"George St, north",G-1,"PSB ""Central"""',
        )
    )
    path = tmp_path / "registry.csv"
    original.dump(path)
    loaded = Registry.load(path)
    assert list(loaded) == list(original)
    assert loaded.to_csv() == original.to_csv() == path.read_text(encoding="utf-8")
    crowd = loaded.get("cr-9")
    assert crowd is not None
    assert (crowd.street, crowd.unit) == ("George St, north", 'PSB "Central"')


def test_to_csv_writes_coordinates_with_six_decimals():
    """Coordinates are written with exactly six decimals (about 0.1 m), header first."""
    text = Registry.parse(csv_text("a,smoke,1.5,-2,D,S,G,U")).to_csv()
    assert text == f"{HEADER}\na,smoke,1.500000,-2.000000,D,S,G,U\n"


def test_load_of_a_missing_file_names_the_file(tmp_path):
    """Loading a file that does not exist gives a ConfigError naming it, chained to the OSError."""
    missing = tmp_path / "nowhere.csv"
    with pytest.raises(ConfigError) as info:
        Registry.load(missing)
    err = info.value
    assert err.path == missing
    assert err.key == "file"
    assert str(missing) in str(err)
    assert "readable registry CSV" in err.expected
    assert isinstance(err.__cause__, OSError)


def test_load_errors_name_the_real_file(tmp_path):
    """Errors while loading a file carry that file's path, not a placeholder."""
    path = tmp_path / "bad.csv"
    path.write_text(csv_text(ROW_WL, "x,water_level,95,0,D,S,G,U"), encoding="utf-8")
    with pytest.raises(ConfigError) as info:
        Registry.load(str(path))
    assert info.value.path == path
    assert str(info.value).startswith(f"{path}: line 3, column lat:")
