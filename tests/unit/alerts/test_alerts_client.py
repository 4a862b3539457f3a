"""`alerts.client` and the `cityvitals alerts` API commands against the real API on a
real loopback server: what an operator types, what the service then holds."""

from __future__ import annotations

import asyncio
import socket
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from concurrent.futures import Future
from pathlib import Path
from typing import Any

import pytest
from click.testing import CliRunner

from alerts.api import AlertsApi, Tokens
from alerts.client import AlertsApiError, AlertsClient, parse_matcher
from alerts.service import AlertService
from cityvitals.citygen import generate_city
from cityvitals.cli import main
from cityvitals.clock import ManualClock
from cityvitals.levels import Level
from tests.factories import make_warning
from tests.integration.http_support import serve_app

T0 = 1_764_028_800.0
OPERATOR, VIEWER = "o" * 32, "v" * 32


class Receiver:
    name = "ops"

    def __init__(self) -> None:
        self.events: list[tuple[str, str]] = []

    async def send(self, n: Any) -> None:
        self.events.append((n.event, n.alert.fingerprint))


def _tokens(tmp_path: Path) -> Tokens:
    path = tmp_path / "tokens"
    path.write_text(f"{OPERATOR} operator li.wei\n{VIEWER} viewer ops-screen\n")
    return Tokens.load(path)


async def _started(tmp_path: Path, ops: Receiver) -> AsyncIterator[tuple[str, AlertService]]:
    clock = ManualClock(T0)
    async with AlertService([ops], clock=clock) as svc:
        for i, level in enumerate((Level.ORANGE, Level.RED), 1):
            await svc.submit(
                make_warning(level, ts_ms=int(T0 * 1000), seq=i, fp=f"fp-{i}", node=f"wl-{i}")
            )
        await svc.drain()
        api = AlertsApi(svc, _tokens(tmp_path), now_s=clock.now)
        async with serve_app(api.app()) as url:
            yield url, svc


@pytest.fixture
async def served(tmp_path: Path) -> AsyncIterator[tuple[str, AlertService, Receiver]]:
    ops = Receiver()
    async for url, svc in _started(tmp_path, ops):
        yield url, svc, ops


async def test_the_client_reads_and_changes_what_the_service_holds(served) -> None:
    url, svc, ops = served
    async with AlertsClient(url, OPERATOR) as api:
        alerts = await api.alerts()
        assert sorted(a.fingerprint for a in alerts) == ["fp-1", "fp-2"]
        assert [a.fingerprint for a in await api.alerts(min_level=Level.RED)] == ["fp-2"]
        assert (await api.alert("fp-1")).level is Level.ORANGE
        acked = await api.acknowledge("fp-1")
        assert (acked.state, acked.acknowledged_by) == ("acknowledged", "li.wei")
        assert (await api.resolve("fp-2")).state == "resolved"
        assert [a.fingerprint for a in await api.alerts(resolved=True)] == ["fp-2"]
        assert (await api.close("fp-2")).state == "closed"
        opened, _ = await api.incidents()
        assert [(i.alerts, i.open) for i in opened] == [(("fp-1", "fp-2"), ("fp-1",))]
        silence = await api.silence(
            [parse_matcher("district=Harbour")], duration_s=3600, reason="pump works"
        )
        assert (silence.author, silence.ends_ms - silence.starts_ms) == ("li.wei", 3_600_000)
        assert [s.id for s in await api.silences()] == [silence.id]
        assert (await api.expire(silence.id)).id == silence.id
        assert await api.silences() == []
        rows = await api.metrics()
        assert sorted((r["what"], r["level"]) for r in rows) == [
            ("acknowledge", "orange"),
            ("detect", "orange"),
            ("detect", "red"),
            ("resolve", "red"),
        ]
    await svc.drain()
    assert ("acknowledged", "fp-1") in ops.events
    assert ("resolved", "fp-2") in ops.events


async def test_refusals_are_one_error_type_with_the_status_and_the_servers_words(served) -> None:
    url, svc, _ = served
    async with AlertsClient(url, VIEWER) as api:
        with pytest.raises(AlertsApiError) as refused:
            await api.acknowledge("fp-1")
    assert refused.value.status == 403
    assert "ops-screen is a viewer; this needs operator" in str(refused.value)
    async with AlertsClient(url, "x" * 32) as api:
        with pytest.raises(AlertsApiError, match="this token is not known") as unknown:
            await api.alerts()
    assert unknown.value.status == 401
    async with AlertsClient(url, OPERATOR) as api:
        with pytest.raises(AlertsApiError, match="no open alert 'nope'"):
            await api.acknowledge("nope")
    assert svc.book.get("fp-1").state == "firing"


async def test_a_server_not_there_is_status_0() -> None:
    with socket.socket() as sock:  # bound, never listening: refused, and nobody else's
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        async with AlertsClient(f"http://127.0.0.1:{port}", OPERATOR) as api:
            with pytest.raises(AlertsApiError, match="cannot reach the alerts API") as gone:
                await api.alerts()
    assert gone.value.status == 0


# -- the CLI: the server in a thread of its own, as it would be in another process ----


class ServerThread:
    """The service and its API on a loop in another thread (CliRunner runs its own)."""

    def __init__(self, tmp_path: Path) -> None:
        self.tmp_path = tmp_path
        self.ops = Receiver()
        self.loop = asyncio.new_event_loop()
        self.url = ""
        self.svc: AlertService | None = None
        self._ready = threading.Event()
        self._stop: asyncio.Event | None = None
        self._thread = threading.Thread(target=self.loop.run_until_complete, args=(self._run(),))

    async def _run(self) -> None:
        self._stop = asyncio.Event()
        async for url, svc in _started(self.tmp_path, self.ops):
            self.url, self.svc = url, svc
            self._ready.set()
            await self._stop.wait()

    def __enter__(self) -> ServerThread:
        self._thread.start()
        assert self._ready.wait(10), "the API did not start"
        return self

    def __exit__(self, *exc: object) -> None:
        assert self._stop is not None
        self.loop.call_soon_threadsafe(self._stop.set)
        self._thread.join(10)
        self.loop.close()

    def read(self, look: Callable[[AlertService], Any]) -> Any:
        """`look` at the service on its own loop (it is not thread-safe)."""
        svc = self.svc
        assert svc is not None

        async def there() -> Any:
            return look(svc)

        done: Future[Any] = asyncio.run_coroutine_threadsafe(there(), self.loop)
        return done.result(10)


@pytest.fixture
def server(tmp_path: Path) -> Iterator[ServerThread]:
    with ServerThread(tmp_path) as running:
        yield running


def cli(server: ServerThread, *args: str, token: str = OPERATOR) -> Any:
    env = {"CITYVITALS_ALERTS_URL": server.url, "CITYVITALS_ALERTS_TOKEN": token}
    return CliRunner().invoke(main, ["alerts", *args], env=env, catch_exceptions=False)


def test_list_shows_the_open_alerts_strongest_first(server) -> None:
    result = cli(server, "list")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0] == "2 open alerts"
    assert lines[1].startswith("  fp-2  red    firing")
    assert "water_level.depth  wl-2  Harbour / Dockside Street / HB-101" in lines[1]
    assert lines[2].startswith("  fp-1  orange firing")
    only_red = cli(server, "list", "--min-level", "red", "--json")
    assert '"fingerprint": "fp-2"' in only_red.output
    assert "fp-1" not in only_red.output


def test_ack_each_and_say_which_could_not_be(server) -> None:
    result = cli(server, "ack", "fp-1", "nope")
    assert result.exit_code == 1
    assert result.output.startswith("acknowledged fp-1  orange acknowledged by li.wei")
    assert "error: nope: POST /api/v1/alerts/nope/acknowledge: HTTP 404: no open alert 'nope'" in (
        result.output
    )
    assert server.read(lambda svc: svc.book.get("fp-1").state) == "acknowledged"


def test_a_viewer_cannot_acknowledge(server) -> None:
    result = cli(server, "ack", "fp-1", token=VIEWER)
    assert result.exit_code == 1
    assert "HTTP 403: ops-screen is a viewer; this needs operator" in result.output


def test_silence_list_and_expire(server) -> None:
    made = cli(
        server, "silence", "district=Harbour", r"rule=~water_level\..*", "--for", "2h",
        "--reason", "pump station maintenance",
    )  # fmt: skip
    assert made.exit_code == 0, made.output
    assert made.output.startswith("silenced ")
    assert r"district=Harbour, rule=~water_level\..*" in made.output
    assert "2025-11-25 00:00 to 2025-11-25 02:00 UTC  by li.wei: pump station maintenance" in (
        made.output
    )
    silence_id = made.output.split()[1]
    listed = cli(server, "silences")
    assert listed.output.splitlines()[0] == "1 silence"
    assert silence_id in listed.output
    assert cli(server, "expire", silence_id).output.startswith(f"expired {silence_id}")
    assert cli(server, "silences").output.splitlines()[0] == "0 silences"


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (("silence", "colour=red", "--for", "1h", "--reason", "x"), "a matcher is <label><op>"),
        (("silence", "kind=smoke", "--for", "soon", "--reason", "x"), "a duration such as 90s"),
        (("silence", "kind=smoke", "--for", "0s", "--reason", "x"), "a duration such as 90s"),
    ],
)
def test_bad_silences_are_usage_errors_before_any_request(server, args, message) -> None:
    result = cli(server, *args)
    assert result.exit_code == 2
    assert message in result.output
    assert server.read(lambda svc: svc.silences.current(0)) == []


def test_no_token_and_an_empty_token_file_say_what_is_needed(server, tmp_path) -> None:
    env = {"CITYVITALS_ALERTS_URL": server.url, "CITYVITALS_ALERTS_TOKEN": ""}
    result = CliRunner().invoke(main, ["alerts", "list"], env=env)
    assert result.exit_code == 2
    assert "the API token is needed: --token-file, or $CITYVITALS_ALERTS_TOKEN" in result.output
    (tmp_path / "empty").write_text("\n")
    result = CliRunner().invoke(
        main, ["alerts", "list", "--token-file", str(tmp_path / "empty")], env=env
    )
    assert result.exit_code == 1
    assert "the file is empty; it should hold the API token" in result.output


def test_the_url_comes_from_the_config_when_not_given(server, tmp_path) -> None:
    port = server.url.rsplit(":", 1)[1]
    (tmp_path / "cityvitals.toml").write_text(
        f'registry = "city.csv"\n[alerts.api]\nlisten = "0.0.0.0:{port}"\ntokens_file = "tokens"\n'
    )
    (tmp_path / "token").write_text(OPERATOR + "\n")
    generate_city(nodes=10, districts=1, seed=1).dump(tmp_path / "city.csv")
    result = CliRunner().invoke(
        main,
        ["alerts", "list", "--config", str(tmp_path / "cityvitals.toml"),
         "--token-file", str(tmp_path / "token")],
        env={"CITYVITALS_ALERTS_URL": ""},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert result.output.startswith("2 open alerts")
