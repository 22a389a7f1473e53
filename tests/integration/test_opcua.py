"""The OPC UA sink (#31): `serve` and `watch` host an OPC UA server, and a real client (asyncua's `Client`) reads each
profile's variables change per result, as the history has it; users, certificates and bad settings. Every server
listens on 127.0.0.1 at a free port and stops with its test (which checks that it did)."""

from __future__ import annotations

import asyncio
import datetime as dt
import math
import shutil
import socket
import sys
import time
from pathlib import Path
from typing import Any

import pytest
from asyncua import Client, ua
from asyncua.ua.uaerrors import BadIdentityTokenRejected, BadUserAccessDenied

from kanoclip.errors import ConfigError
from kanoclip.inference.thresholds import Thresholds
from kanoclip.labels import Label
from kanoclip.station.sinks.config import SinkConfig
from kanoclip.station.sinks.fanout import Sinks
from kanoclip.station.sinks.message import message
from kanoclip.station.sinks.opcua import NAMESPACE, PASSWORD_ENV, VARIABLES, OpcUa
from tests.support.station import files, ok, probes, station_client
from tests.support.watch import bottles, station_at, wait_for, watching

TYPES = {
    "LastScore": ua.VariantType.Double,
    "LastLabel": ua.VariantType.Int32,
    "LastPath": ua.VariantType.String,
    "LastTime": ua.VariantType.DateTime,
    "Threshold": ua.VariantType.Double,
    "DefectCount": ua.VariantType.UInt64,
    "Count": ua.VariantType.UInt64,
}


def free_url() -> str:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return f"opc.tcp://127.0.0.1:{s.getsockname()[1]}"


def port_of(url: str) -> int:
    return int(url.rsplit(":", 1)[1])


async def _read(client: Client, profile: str) -> dict[str, Any] | None:
    """Browse Objects/Kanoclip/<profile> by browse names, as a SCADA would, and read its variables (None: no such
    profile object yet)."""
    ns = await client.get_namespace_index(NAMESPACE)
    roots = {(await n.read_browse_name()).Name: n for n in await client.nodes.objects.get_children()}
    profiles = {(await n.read_browse_name()).Name: n for n in await roots["Kanoclip"].get_children()}
    if profile not in profiles:
        return None
    nodes = {}
    for node in await profiles[profile].get_children():
        name = await node.read_browse_name()
        assert name.NamespaceIndex == ns
        assert await node.read_data_type_as_variant_type() == TYPES[name.Name], name
        nodes[name.Name] = node
    # one Read request: a snapshot of one result (the server writes a result's seven values in one step)
    values = dict(zip(nodes, await client.read_values(list(nodes.values())), strict=True))
    assert sorted(values) == sorted(VARIABLES) == sorted(TYPES)  # these seven, no more
    # the documented string node ids name the same variables
    assert await client.get_node(f"ns={ns};s=Kanoclip/{profile}/Count").read_value() == values["Count"]
    return values


def read(url: str, profile: str = "default", user: str | None = None, password: str | None = None) -> Any:
    async def go() -> dict[str, Any] | None:
        client = Client(url, timeout=5)
        if user is not None:
            client.set_user(user)
            client.set_password(password or "")
        async with client:
            return await _read(client, profile)

    return asyncio.run(go())


def counted(url: str, n: int, **login: Any) -> dict[str, Any]:
    """The profile's variables once its Count is n (published off the scoring thread: a moment later)."""
    return wait_for(lambda: (v := read(url, **login)) is not None and v["Count"] == n and v, 30, f"Count {n}")


def assert_stopped(url: str) -> None:
    """Nothing answers on the port any more, and a new server may listen there."""
    with pytest.raises((OSError, asyncio.TimeoutError, TimeoutError)):
        read(url)
    with socket.socket() as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # as a server binds (asyncua's too)
        s.bind(("127.0.0.1", port_of(url)))
        s.listen()


def parse_time(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00"))


def test_serve_publishes_each_result_and_the_server_stops_with_it(tmp_path: Path, shared_data: Path) -> None:
    url = free_url()
    good, broken = probes(shared_data)[:2]
    with station_client(tmp_path / "state", sinks=SinkConfig(opcua=url)) as c:
        assert read(url) is None  # Objects/Kanoclip is there; a profile's object comes with its first result
        before = dt.datetime.now(dt.timezone.utc)
        first = ok(c.post("/v1/detect", files=files([good])))["results"][0]
        after = dt.datetime.now(dt.timezone.utc)
        v = counted(url, 1)
        row = ok(c.get(f"/v1/results/{first['result_id']}"))
        assert (v["LastScore"], v["LastPath"], v["DefectCount"]) == (row["score"], row["source"], 0)
        assert row["source"] == "000.png" and v["LastLabel"] == -1 and row["label"] is None  # no threshold yet
        assert math.isnan(v["Threshold"])
        assert before - dt.timedelta(milliseconds=1) <= v["LastTime"] <= after
        assert dt.timedelta(0) <= v["LastTime"] - parse_time(row["time"]) < dt.timedelta(seconds=5)

        c.app.state.station.set_thresholds("default", Thresholds(-1.0))  # type: ignore[attr-defined]
        second = ok(c.post("/v1/detect", files=files([broken])))["results"][0]
        v = counted(url, 2)
        row = ok(c.get(f"/v1/results/{second['result_id']}"))
        assert (v["LastScore"], v["LastPath"], v["LastLabel"]) == (row["score"], row["source"], row["label"])
        assert row["label"] == Label.DEFECT and (v["DefectCount"], v["Threshold"]) == (1, -1.0)
        assert v["LastScore"] != first["score"]  # a different part, a different score: the variable moved
    assert_stopped(url)  # the app's shutdown closed the sink


def test_a_result_the_server_cannot_take_is_an_event_and_stays_in_the_history(
    tmp_path: Path, shared_data: Path
) -> None:
    url = free_url()
    with station_client(tmp_path / "state", sinks=SinkConfig(opcua=url)) as c:
        sink = c.app.state.sinks.sinks[0]  # type: ignore[attr-defined]
        sink.queue_size = 0  # a server loop that has fallen behind: no room for one more
        rid = ok(c.post("/v1/detect", files=files(probes(shared_data)[:1])))["results"][0]["result_id"]
        events = ok(c.get("/v1/events"))["events"]
        assert [e["kind"] for e in events] == ["opcua_failed"] and "results were already waiting" in events[0]["detail"]
        assert events[0]["source"] == "000.png" and url in events[0]["detail"]
        assert ok(c.get(f"/v1/results/{rid}"))["id"] == rid
        assert read(url) is None  # nothing was published
        # a `watch --server` reports the same kind through the API
        ok(c.post("/v1/events", json={"profile": "default", "source": "x.png", "kind": "opcua_failed"}))
    assert_stopped(url)


def test_watch_updates_the_variables_per_file_and_its_server_stops_with_it(tmp_path: Path, shared_data: Path) -> None:
    url = free_url()
    inbox = tmp_path / "inbox"
    inbox.mkdir()
    station = station_at(tmp_path / "state")
    station.set_thresholds("default", Thresholds(-1.0))  # every part a defect
    parts = bottles(shared_data, 2)
    with watching(station, [str(inbox)], opcua=url):
        for n, part in enumerate(parts, start=1):
            shutil.copy(part, inbox / f"part{n}.png")
            v = counted(url, n)
            row = next(r for r in station.iter_results() if r["source"] == str(inbox / f"part{n}.png"))
            assert (v["LastPath"], v["LastScore"], v["LastLabel"]) == (row["source"], row["score"], int(Label.DEFECT))
            assert v["DefectCount"] == n
            assert v["Threshold"] == row["image_threshold"] == -1.0  # the one the part was judged by
    assert_stopped(url)


def test_a_user_and_password_refuse_anonymous_clients_and_wrong_passwords(monkeypatch: pytest.MonkeyPatch) -> None:
    url = free_url()
    monkeypatch.setenv(PASSWORD_ENV, "s3cret")  # out of `ps`
    failures: list[tuple[str, str]] = []
    sinks = Sinks.open(SinkConfig(opcua=url, opcua_user="plc"), lambda m, kind, why: failures.append((kind, why)))
    try:
        sinks.send(message("bottle", {"id": 7, "source": "a.png", "score": 0.25, "label": 0}, 0.5))
        v = counted(url, 1, profile="bottle", user="plc", password="s3cret")
        assert (v["LastScore"], v["LastLabel"], v["Threshold"], v["LastPath"]) == (0.25, 0, 0.5, "a.png")
        with pytest.raises(BadIdentityTokenRejected):
            read(url, "bottle")
        with pytest.raises(BadUserAccessDenied):
            read(url, "bottle", user="plc", password="guess")
        with pytest.raises(BadUserAccessDenied):
            read(url, "bottle", user="admin", password="s3cret")
    finally:
        sinks.close()
    assert failures == []
    assert_stopped(url)


def test_a_security_policy_serves_only_signed_and_encrypted_sessions(tmp_path: Path) -> None:
    from asyncua.crypto.cert_gen import setup_self_signed_certificate
    from cryptography.x509.oid import ExtendedKeyUsageOID

    async def certificates() -> None:
        for who, uri, use in (
            ("server", "urn:line1:kanoclip", ExtendedKeyUsageOID.SERVER_AUTH),
            ("client", "urn:line1:scada", ExtendedKeyUsageOID.CLIENT_AUTH),
        ):
            # the server's named as many are (.key PEM, .crt DER); asyncua's client goes by .pem and .der
            key, cert = (f"{who}.key", f"{who}.crt") if who == "server" else (f"{who}.pem", f"{who}.der")
            await setup_self_signed_certificate(
                tmp_path / key, tmp_path / cert, uri, "localhost", [use], {"commonName": who}
            )

    asyncio.run(certificates())
    url = free_url()
    cfg = SinkConfig(
        opcua=url,
        opcua_user="plc",
        opcua_password="s3cret",
        opcua_security="Basic256Sha256_SignAndEncrypt",
        opcua_cert=str(tmp_path / "server.crt"),
        opcua_key=str(tmp_path / "server.key"),
    )
    sinks = Sinks.open(cfg, lambda m, kind, why: None)

    async def secure_read() -> tuple[Any, Any]:
        client = Client(url, timeout=5)
        await client.set_security_string(
            f"Basic256Sha256,SignAndEncrypt,{tmp_path / 'client.der'},{tmp_path / 'client.pem'}"
        )
        client.set_user("plc")
        client.set_password("s3cret")
        async with client:
            server_uri = await client.get_node(ua.ObjectIds.Server_ServerArray).read_value()
            return await _read(client, "bottle"), server_uri

    try:
        sinks.send(message("bottle", {"id": 1, "source": "a.png", "score": 0.5, "label": 1}, 0.25))
        values, server_uri = wait_for(lambda: (r := asyncio.run(secure_read()))[0] is not None and r, 30, "a result")
        assert (values["Count"], values["DefectCount"], values["LastScore"]) == (1, 1, 0.5)
        assert server_uri == ["urn:line1:kanoclip"]  # the application URI the certificate names
        with pytest.raises(ua.UaError, match="No matching endpoints"):  # no unencrypted endpoint at all
            read(url, "bottle", user="plc", password="s3cret")
    finally:
        sinks.close()
    assert_stopped(url)


def test_a_port_in_use_bad_urls_and_missing_pieces_are_clear_errors(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def nothing(m: dict[str, Any], why: str) -> None:
        raise AssertionError(why)

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        start = time.monotonic()
        with pytest.raises(ConfigError, match=rf"port {port} is already in use on 127\.0\.0\.1"):
            OpcUa(f"opc.tcp://127.0.0.1:{port}", nothing)
        assert time.monotonic() - start < 30
    for url, says in (
        ("http://127.0.0.1:4840", "--opcua takes opc.tcp://HOST:PORT"),
        ("opc.tcp://:4840", "--opcua takes opc.tcp://HOST:PORT"),
        ("opc.tcp://127.0.0.1:port", "--opcua takes opc.tcp://HOST:PORT"),
        ("opc.tcp://plc:pw@127.0.0.1:4840", f"--opcua-user and the password in env {PASSWORD_ENV}"),
    ):
        with pytest.raises(ConfigError, match=says):
            OpcUa(url, nothing)
    monkeypatch.delenv(PASSWORD_ENV, raising=False)
    url = free_url()
    (tmp_path / "notes.crt").write_text("not a certificate\n")
    for settings, says in (
        ({"user": "plc"}, f"--opcua-user plc needs a password: env {PASSWORD_ENV}"),
        ({"password": "pw"}, "without --opcua-user"),
        ({"security": "Basic256Sha256_Sign"}, "needs the server's certificate: --opcua-cert FILE"),
        ({"security": "Basic256Sha256_Sign", "cert": tmp_path / "no.der", "key": tmp_path / "no.pem"}, "no such file"),
        ({"cert": tmp_path / "no.der"}, "for a --opcua-security policy"),
        (
            {"security": "Basic256Sha256_Sign", "cert": tmp_path / "notes.crt", "key": tmp_path / "notes.crt"},
            "notes.crt: not a PEM or DER certificate",
        ),
        ({"security": "Basic128Rsa15_Sign"}, "--opcua-security is one of none, Basic256Sha256_Sign"),
    ):
        with pytest.raises(ConfigError, match=says):
            OpcUa(url, nothing, **settings)
    monkeypatch.setitem(sys.modules, "asyncua", None)  # as if not installed
    with pytest.raises(ConfigError, match=r"pip install 'kanoclip\[opcua\]'"):
        OpcUa(url, nothing)
