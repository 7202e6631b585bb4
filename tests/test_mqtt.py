"""MQTT upstreams: config, topics, payloads, and delivery against a real Mosquitto (Debian's
package, started on loopback by tests/mosquitto.py with a password file and TLS listeners).

The long ones drive the real agent as a process: ``ENVAGENT_MQTT_KILLS`` SIGKILLs (default 50)
with broker restarts among them, and a broker outage of ``ENVAGENT_MQTT_OUTAGE_S`` seconds
(default 120; the issue's 10 minutes by hand: 600) with a wrong password on a second MQTT
upstream and an HTTP upstream beside it. The subscriber keeps every reading by its id: none
may be missing, and a reading received twice came byte-identical.
"""

from __future__ import annotations

import json
import os
import random
import socket
import subprocess
import sys
import threading
import time
import tomllib
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

import mosquitto
import pytest
from mosquitto import Mosquitto, subscribed
from recording_server import RecordingServer

from agent.config import Config, load_config, parse_config
from agent.config.mqtt import MqttConfig
from agent.core.credentials import CREDENTIALS_DIRECTORY, REFUSED_VARIABLES, Secret
from agent.core.errors import ConfigError
from agent.core.reading import Reading
from agent.store.outbox import Outbox
from agent.store.outbox import Subscriber as Cursor
from agent.uplink.encoders import reading_id
from agent.uplink.mqtt.payload import MessageEncoder, acknowledged_prefix, pack, unpack
from agent.uplink.mqtt.topics import Topics, escape_level, status_topic
from agent.uplink.mqtt.transport import MqttSink, check_write
from agent.uplink.sink import Outcome
from agent.uplink.state import UplinkState
from agent.uplink.transports import build_sink
from agent.uplink.worker import Uplink, state_file
from drivers.sim.clock import FakeClock

ROOT = Path(__file__).resolve().parents[1]
KILLS = int(os.environ.get("ENVAGENT_MQTT_KILLS", "50"))
OUTAGE_S = float(os.environ.get("ENVAGENT_MQTT_OUTAGE_S", "120"))
UNIT, SITE = "mqtt-1", "Lake/North #2 +east"  # a site that would break topics unescaped
NS = 1_000_000_000
T0 = 1_767_225_600 * NS
READY_TIMEOUT_S = 60.0
STATION = ('[unit]\nid = "u1"\nsite = "Roof"\n[[sensor]]\nid = "air"\ndriver = "bme280"\n'
           'address = 0x76\n[[sensor]]\nid = "dust"\ndriver = "pmsa003i"\naddress = 0x12\n')
TLS_URL = "mqtts://broker.example.org:8883"


def readings(n: int, *, sensors: tuple[str, ...] = ("air", "dust")) -> list[Reading]:
    out = []
    for i in range(n):
        sensor = sensors[i % len(sensors)]
        out.append(Reading(sensor, "temperature" if sensor == "air" else "pm2_5", 20.0 + i,
                           "°C", T0 + (i // len(sensors)) * NS, i, "boot-1", True))
    return out


def config_of(uplink: str, station: str = STATION) -> Config:
    return parse_config(tomllib.loads(station + uplink), source="t.toml")


def problems_of(tmp_path: Path, uplink: str) -> list[str]:
    path = tmp_path / "t.toml"
    path.write_text(STATION + uplink, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    return [line.removeprefix(f"{path}: ") for line in caught.value.problems]


# --- config --------------------------------------------------------------------------------------


def test_an_mqtt_upstream_with_its_own_keys(tmp_path: Path) -> None:
    config = config_of(f'[[uplink]]\nname = "broker"\nurl = "{TLS_URL}"\n'
                       'topic = "fleet/{unit}/{sensor}"\npayload = "lineprotocol"\n'
                       'max_message_bytes = "128KiB"\nmax_inflight = 5\nkeepalive = "30s"\n'
                       'session_expiry = "2h"\nstatus_prefix = "fleet/{unit}"\n'
                       'credentials_file = "/etc/envagent/mqtt"\nca_file = "/etc/ca.pem"\n')
    (uplink,) = config.uplinks
    assert uplink.mqtt == MqttConfig(topic="fleet/{unit}/{sensor}", payload="lineprotocol",
                                     max_message_bytes=128 * 1024, max_inflight=5,
                                     keepalive=30, session_expiry=7200,
                                     status_prefix="fleet/{unit}")
    assert uplink.token_file == Path("/etc/envagent/mqtt") and uplink.format == "lineprotocol"
    assert (uplink.secret_key, uplink.secret_name) == ("credentials_file", "MQTT credentials")


def test_thingsboard_has_its_topic_and_no_status(tmp_path: Path) -> None:
    (uplink,) = config_of(f'[[uplink]]\nname = "tb"\nurl = "{TLS_URL}"\n'
                          'payload = "thingsboard"\n').uplinks
    assert uplink.mqtt is not None
    assert (uplink.mqtt.topic, uplink.mqtt.status_prefix) == ("v1/devices/me/telemetry", None)


@pytest.mark.parametrize(("extra", "line"), [
    ('topic = "envagent/+/{sensor}"', 'topic = "envagent/+/{sensor}": contains a wildcard (+ '
     'or #), which a topic to publish to cannot have; such as "envagent/{site}/{unit}/'
     '{sensor}"'),
    ('topic = "envagent/#"', 'topic = "envagent/#": contains a wildcard'),
    ('topic = "$SYS/{unit}"', 'topic = "$SYS/{unit}": topics starting with $ belong to the '
     "broker ($SYS)"),
    ('topic = "e/{station}"', 'topic = "e/{station}": {station} is not a placeholder here; '
     "expected {site}, {unit}, {sensor}"),
    ('topic = "e/{unit"', 'topic = "e/{unit": a { or } does not pair up'),
    ('status_prefix = "e/{sensor}"', 'status_prefix = "e/{sensor}": {sensor} is not a '
     "placeholder here; expected {site}, {unit}"),
    ('payload = "xml"', 'payload = "xml": expected one of "json", "lineprotocol", '
     '"thingsboard"'),
    ('max_message_bytes = "1GiB"', "max_message_bytes: is more than 16 MiB"),
    ("max_inflight = 0", "max_inflight = 0: expected an integer from 1 to 1000"),
    ("qos = 0", "qos: cannot be set: the QoS is always 1 (at least once)"),
    ('format = "json"', "format: does not apply to an MQTT upstream: an MQTT upstream chooses "
     "its payload"),
    ('token_file = "/x"', "token_file: does not apply to an MQTT upstream"),
    ('client_id = "a b"', 'client_id = "a b": expected 1 to 64 letters, digits'),
])
def test_a_bad_mqtt_key_is_one_clear_line(tmp_path: Path, extra: str, line: str) -> None:
    (problem,) = problems_of(tmp_path, f'[[uplink]]\nname = "b"\nurl = "{TLS_URL}"\n{extra}\n')
    assert problem.startswith("uplink 'b' (line ") and line in problem, problem


@pytest.mark.parametrize("key", ["password", "username", "token"])
def test_credentials_in_the_config_are_refused_unshown(tmp_path: Path, key: str) -> None:
    (problem,) = problems_of(tmp_path, f'[[uplink]]\nname = "b"\nurl = "{TLS_URL}"\n'
                                       f'{key} = "hunter2"\n')
    assert "hunter2" not in problem
    assert "a secret never goes in the config file; put the MQTT user name and password" \
        in problem and "credentials_file" in problem


@pytest.mark.parametrize(("url", "words"), [
    ("mqtt://127.0.0.1:1883", "plain mqtt sends readings and the credentials unencrypted; use "
     "mqtts://, or for a broker on this machine set allow_insecure = true"),
    ("mqtts://b.example.org/envagent", "an MQTT URL takes no path, query or #fragment"),
    ("mqtts://:8883", "no host name"),
])
def test_a_bad_mqtt_url_is_refused(tmp_path: Path, url: str, words: str) -> None:
    (problem,) = problems_of(tmp_path, f'[[uplink]]\nname = "b"\nurl = "{url}"\n')
    assert words in problem, problem


def test_plain_mqtt_only_to_this_machine(tmp_path: Path) -> None:
    config_of('[[uplink]]\nname = "b"\nurl = "mqtt://127.0.0.1:1883"\nallow_insecure = true\n')
    (problem,) = problems_of(tmp_path, '[[uplink]]\nname = "b"\nurl = "mqtt://10.0.0.5"\n'
                                       "allow_insecure = true\n")
    assert "allow_insecure allows plain mqtt only to this machine" in problem
    assert "use mqtts:// for any other host" in problem


def test_mqtt_keys_on_an_http_upstream_are_refused(tmp_path: Path) -> None:
    (problem,) = problems_of(tmp_path, '[[uplink]]\nname = "b"\nurl = "https://x.org/write"\n'
                                       'topic = "a/{unit}"\n')
    assert "topic: applies to mqtt:// and mqtts:// upstreams only" in problem


def test_thingsboard_refuses_a_topic_and_a_status_prefix(tmp_path: Path) -> None:
    found = problems_of(tmp_path, f'[[uplink]]\nname = "b"\nurl = "{TLS_URL}"\n'
                                  'payload = "thingsboard"\ntopic = "a/{unit}"\n'
                                  'status_prefix = "a/{unit}"\n')
    assert len(found) == 2
    assert "topic: ThingsBoard takes telemetry on v1/devices/me/telemetry only" in found[0]
    assert "status_prefix: ThingsBoard has no last will" in found[1]


# --- topics: an id can neither create nor escape a level -----------------------------------------


@pytest.mark.parametrize("value", ["a/b", "+", "#", "a/+/#", "$SYS", "..", "%2F", "x\x00y",
                                   "汉中 wetland, east", "/", "\x7f\x85"])
def test_a_value_stays_one_topic_level(value: str) -> None:
    topics = Topics("envagent/{site}/{unit}/{sensor}", site=value, unit=value)
    topic = topics(value)
    levels = topic.split("/")
    assert len(levels) == 4 and levels[0] == "envagent"
    assert levels[1:4] == [escape_level(value)] * 3 and unquote(levels[1]) == value
    assert not {"+", "#", "\x00"} & set(topic) and not levels[1].startswith("$")
    assert topic.encode("utf-8").decode("utf-8") == topic


def test_two_values_never_share_a_level() -> None:
    values = ["a/b", "a%2Fb", "a%252Fb", "a+b", "a%2Bb"]
    assert len({escape_level(v) for v in values}) == len(values)


def test_the_agents_readings_go_to_its_own_topic_and_the_status_under_the_prefix() -> None:
    topics = Topics("e/{unit}/{sensor}", site="s", unit="u")
    assert topics("envagent@broker") == topics("envagent") == "e/u/envagent"
    assert status_topic("e/{site}/{unit}/", "status", site="A/B", unit="u") == "e/A%2FB/u/status"


# --- payloads ------------------------------------------------------------------------------------


def encoder(payload: str, limit: int, *, simulated: bool = False) -> MessageEncoder:
    topics = ("v1/devices/me/telemetry" if payload == "thingsboard"
              else Topics("e/{unit}/{sensor}", site="Roof", unit="u1"))
    return MessageEncoder(payload, topics, unit="u1", site="Roof",
                          drivers={"air": "bme280", "dust": "pmsa003i"}, max_bytes=limit,
                          simulated=simulated)


@pytest.mark.parametrize("payload", ["json", "lineprotocol", "thingsboard"])
@pytest.mark.parametrize("limit", [1024, 4096, 65536])
def test_messages_are_split_to_the_limit_and_carry_every_reading_once(payload: str,
                                                                      limit: int) -> None:
    batch = readings(700)
    count, messages = unpack(encoder(payload, limit).encode(batch))
    assert count == 700 and all(len(m.payload) <= limit for m in messages)
    assert sum(m.count for m in messages) == 700
    if payload == "json":
        ids = [item["id"] for m in messages for item in json.loads(m.payload)["readings"]]
        assert sorted(ids) == sorted(reading_id("u1", r) for r in batch)
        assert {m.topic for m in messages} == {"e/u1/air", "e/u1/dust"}
    elif payload == "lineprotocol":
        lines = [line for m in messages for line in m.payload.decode().splitlines()]
        assert len(lines) == 700 and all(line.startswith("envagent,") for line in lines)
    else:
        entries = [e for m in messages for e in json.loads(m.payload)]
        assert sum(len(e["values"]) for e in entries) == 700
        assert {m.topic for m in messages} == {"v1/devices/me/telemetry"}
    # the same readings give the same bytes: a resend is byte-identical
    assert encoder(payload, limit).encode(batch) == encoder(payload, limit).encode(batch)


def test_thingsboard_telemetry_has_ms_and_keys_that_cannot_collide() -> None:
    nan = Reading("air", "humidity", float("nan"), "%RH", T0 + 5, 1, "b", False, 2)
    batch = [Reading("air", "temperature", 21.5, "°C", T0 + 5, 1, "b", True),
             Reading("dust", "pm2_5", 8.0, "µg/m³", T0 + 5, 1, "b", True, 1), nan]
    (message,) = unpack(encoder("thingsboard", 65536, simulated=True).encode(batch))[1]
    assert json.loads(message.payload) == [{"ts": T0 // 1_000_000, "values": {
        "simulated": True, "air.temperature": 21.5, "dust.pm2_5": 8.0, "dust.pm2_5_q": 1,
        "air.humidity_nonfinite": "NaN", "air.humidity_q": 18}}]


def test_the_acknowledged_prefix_ends_at_the_earliest_unacknowledged_message() -> None:
    batch = readings(40)
    position = {reading_id("u1", r): p for p, r in enumerate(batch)}
    _, messages = unpack(encoder("json", 1024).encode(batch))
    carried = [{position[item["id"]] for item in json.loads(m.payload)["readings"]}
               for m in messages]
    assert len({m.topic for m in messages}) == 2 and len(messages) > 4
    assert acknowledged_prefix(messages, [True] * len(messages), 40) == 40
    rng = random.Random(7)
    for _ in range(200):
        acked = [rng.random() < 0.7 for _ in messages]
        prefix = acknowledged_prefix(messages, acked, 40)
        safe = set().union(*(c for c, ok in zip(carried, acked, strict=True) if ok))
        assert set(range(prefix)) <= safe  # every reading acked is in an acknowledged message
        if not all(acked):  # and the prefix stops at a reading no acknowledged message has
            assert prefix not in safe


def test_pack_and_unpack_are_each_others_inverse() -> None:
    _, messages = unpack(encoder("json", 1024).encode(readings(30)))
    assert unpack(pack(30, messages)) == (30, messages)


# --- against a real Mosquitto --------------------------------------------------------------------


@pytest.fixture(scope="module")
def broker(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Mosquitto]:
    server = mosquitto.start(mosquitto.require_binary(), tmp_path_factory.mktemp("mosquitto"))
    try:
        yield server
    finally:
        server.stop()


def credentials_file(directory: Path, value: str = f"{mosquitto.USER}:{mosquitto.PASSWORD}",
                     name: str = "mqtt-credentials") -> Path:
    path = directory / name
    path.write_text(value + "\n")
    path.chmod(0o600)
    return path


def mqtt_uplink(broker: Mosquitto, name: str = "broker", *, tls: bool = True,
                extra: str = "") -> str:
    url = broker.tls_url if tls else broker.url
    return (f'[[uplink]]\nname = "{name}"\nurl = "{url}"\n'
            + (f'ca_file = "{broker.ca}"\n' if tls else "allow_insecure = true\n")
            + 'flush_interval = "1s"\nbackoff_min = "100ms"\nbackoff_max = "1s"\n'
              'connect_timeout = "3s"\nread_timeout = "5s"\nbatch_size = 1000\n' + extra)


def worker(outbox: Outbox, config: Config, tmp_path: Path, token: Secret | None) -> Uplink:
    (settings,) = config.uplinks
    return Uplink(outbox, build_sink(config, settings), settings, clock=FakeClock(),
                  token=lambda: token, state_path=tmp_path / state_file(settings.name),
                  rng=random.Random(3))


def drain(uplink: Uplink, steps: int = 200) -> list[Outcome]:
    outcomes = []
    for _ in range(steps):
        step = uplink.step()
        outcomes.append(step.outcome)
        if step.caught_up:
            break
    return outcomes


TOKEN = Secret(f"{mosquitto.USER}:{mosquitto.PASSWORD}")


def test_every_reading_id_reaches_a_subscriber_over_tls(broker: Mosquitto,
                                                        tmp_path: Path) -> None:
    config = config_of(mqtt_uplink(broker, extra="max_message_bytes = 2048\n"),
                       STATION.replace('"Roof"', '"Roof/West #1"'))
    batch = readings(3000)
    with subscribed(broker, "envagent/#") as sub, \
            Outbox(tmp_path / "o.sqlite", max_bytes=64 * 1024**2,
                   subscribers=[Cursor("broker")]) as outbox:
        outbox.append(batch)
        uplink = worker(outbox, config, tmp_path, TOKEN)
        try:
            assert drain(uplink)[:3] == [Outcome.DELIVERED] * 3
        finally:
            uplink.sink.close()
        expected = {reading_id("u1", r) for r in batch}
        sub.wait_for("every reading id", lambda got: set(got.readings) >= expected)
        assert all(len(bodies) == 1 for bodies in sub.received.readings.values())
        assert outbox.stats().backlog == 0
        topics = set(sub.received.topics)
        assert topics == {"envagent/Roof%2FWest %231/u1/air", "envagent/Roof%2FWest %231/u1/dust",
                          "envagent/Roof%2FWest %231/u1/status"}
        sub.wait_for("online, then offline at the clean stop", lambda got: [
            s[1] for s in got.statuses] == [b"online", b"offline"])
    # a fleet view that connects later sees the last word, retained
    with subscribed(broker, "envagent/+/u1/status", client_id="latecomer") as late:
        late.wait_for("the retained status", lambda got: got.statuses == [
            ("envagent/Roof%2FWest %231/u1/status", b"offline", True)])


def test_a_client_certificate_instead_of_a_password(broker: Mosquitto, tmp_path: Path) -> None:
    directory = broker.directory
    config = config_of(mqtt_uplink(broker).replace(str(broker.tls_port), str(broker.mtls_port))
                       + f'client_cert = "{directory}/client.crt"\n'
                         f'client_key = "{directory}/client.key"\n')
    (settings,) = config.uplinks
    sink = build_sink(config, settings)
    try:
        answer = sink.send(sink.encode(readings(10)), None)
        assert answer.outcome is Outcome.DELIVERED, answer
    finally:
        sink.close()
    without = config_of(mqtt_uplink(broker).replace(str(broker.tls_port), str(broker.mtls_port)))
    sink = build_sink(without, without.uplinks[0])
    try:
        assert sink.send(sink.encode(readings(10)), None).outcome is Outcome.RETRY
    finally:
        sink.close()


def test_an_untrusted_broker_certificate_fails_with_a_hint(broker: Mosquitto) -> None:
    config = config_of(mqtt_uplink(broker).replace(f'ca_file = "{broker.ca}"\n', ""))
    sink = build_sink(config, config.uplinks[0])
    try:
        answer = sink.send(sink.encode(readings(2)), TOKEN)
    finally:
        sink.close()
    assert answer.outcome is Outcome.FAILED
    assert "certificate is not trusted" in answer.detail and "ca_file" in answer.hint


def test_a_wrong_password_is_auth_and_never_shown(broker: Mosquitto) -> None:
    config = config_of(mqtt_uplink(broker))
    sink = build_sink(config, config.uplinks[0])
    wrong = Secret(f"{mosquitto.USER}:Wr0ngPassw0rd")
    try:
        answer = sink.send(sink.encode(readings(2)), wrong)
    finally:
        sink.close()
    assert answer.outcome is Outcome.AUTH
    assert "0x87 Not authorized" in answer.detail or "0x86" in answer.detail
    assert "Wr0ngPassw0rd" not in f"{answer}"


def test_doctor_connects_with_the_real_credentials(broker: Mosquitto) -> None:
    config = config_of(mqtt_uplink(broker))
    settings = config.uplinks[0]
    good = check_write(config, settings, TOKEN, "/etc/envagent/mqtt")
    assert good.level == "PASS" and "CONNACK 0x00" in good.detail
    bad = check_write(config, settings, Secret("envagent:nope"), "/etc/envagent/mqtt")
    assert bad.level == "FAIL" and "refused the connection" in bad.detail
    assert "credentials file" in (bad.hint or "")


def test_a_broker_that_refuses_the_topic_puts_the_upstream_in_auth(tmp_path: Path) -> None:
    acl = (f"user {mosquitto.USER}\ntopic write envagent/+/+/status\n"
           f"user {mosquitto.SUBSCRIBER}\ntopic read #\n")
    broker = mosquitto.start(mosquitto.require_binary(), tmp_path / "acl", acl=acl)
    try:
        config = config_of(mqtt_uplink(broker, tls=False))
        sink = build_sink(config, config.uplinks[0])
        try:
            answer = sink.send(sink.encode(readings(4)), TOKEN)
        finally:
            sink.close()
        assert answer.outcome is Outcome.AUTH and "0x87 Not authorized" in answer.detail
        assert answer.accepted is None
    finally:
        broker.stop()


def test_a_message_too_large_for_the_broker_halves_the_batch_and_loses_nothing(
        tmp_path: Path) -> None:
    broker = mosquitto.start(mosquitto.require_binary(), tmp_path / "small",
                             max_packet_size=3000)
    try:
        config = config_of(mqtt_uplink(broker, tls=False, extra='max_message_bytes = "64KiB"\n'))
        batch = readings(400)
        with subscribed(broker, "envagent/#") as sub, \
                Outbox(tmp_path / "o.sqlite", max_bytes=64 * 1024**2,
                       subscribers=[Cursor("broker")]) as outbox:
            outbox.append(batch)
            uplink = worker(outbox, config, tmp_path, TOKEN)
            try:
                outcomes = drain(uplink, 400)
            finally:
                uplink.sink.close()
            assert outcomes[0] is Outcome.TOO_LARGE and Outcome.DELIVERED in outcomes
            assert uplink.batch_limit < 400
            stats = outbox.stats()
            assert (stats.backlog, stats.rejected) == (0, 0), stats
            expected = {reading_id("u1", r) for r in batch}
            sub.wait_for("every reading", lambda got: set(got.readings) >= expected)
    finally:
        broker.stop()


def test_a_lost_connection_acks_only_what_the_broker_acknowledged(broker: Mosquitto,
                                                                   tmp_path: Path) -> None:
    """A stop mid-batch: the answer's ``accepted`` is a prefix whose every reading the
    subscriber has; the rest stays for the next send. The stop comes once the subscriber has a
    few of the batch's messages: with two in flight at most, the agent had the first one's
    PUBACK before it published the third (a fixed delay raced the start of the batch)."""
    config = config_of(mqtt_uplink(broker, extra="max_message_bytes = 1024\n"
                                                 "max_inflight = 2\n"))
    sink = build_sink(config, config.uplinks[0])
    assert isinstance(sink, MqttSink)
    batch = readings(3000, sensors=("air",))
    with subscribed(broker, "envagent/#", client_id="prefix-check") as sub:
        body = sink.encode(batch)
        first = sink.send(sink.encode(batch[:1]), TOKEN)  # connected
        assert first.outcome is Outcome.DELIVERED
        sub.wait_for("the first message and the status", lambda got: got.messages >= 2)
        seen = sub.received.messages

        def stop_mid_batch() -> None:
            deadline = time.monotonic() + 30
            while sub.received.messages < seen + 5 and time.monotonic() < deadline:
                time.sleep(0.001)
            sink.close()

        stopper = threading.Thread(target=stop_mid_batch)
        stopper.start()
        answer = sink.send(body, TOKEN)
        stopper.join()
        assert answer.outcome is Outcome.STOPPED, answer
        accepted = answer.accepted or 0
        assert 0 < accepted < len(batch), accepted
        expected = {reading_id("u1", r) for r in batch[:accepted]}
        sub.wait_for("every acknowledged reading", lambda got: set(got.readings) >= expected)


# --- the real agent: SIGKILLs and broker restarts, an outage, several upstreams ------------------


class Agent:
    """``envagent run --simulate --deliver`` as a process, with READY=1 heard over a notify
    socket (as systemd hears it). A thread reads every notification: a socket nobody reads
    fills up, and the agent's next sd_notify would block (as it would under a hung systemd)."""

    def __init__(self, tmp_path: Path, config_text: str) -> None:
        self.config = tmp_path / "station.toml"
        self.config.write_text(config_text, encoding="utf-8")
        self.cwd, self.data, self.log = tmp_path, tmp_path / "data", tmp_path / "agent.log"
        self.notify = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        name = f"envagent-mqtt-{os.getpid()}-{random.randrange(2**32):08x}"
        self.notify.bind(b"\0" + name.encode())
        dropped = {*REFUSED_VARIABLES, CREDENTIALS_DIRECTORY, "WATCHDOG_USEC", "WATCHDOG_PID"}
        self.env = {k: v for k, v in os.environ.items() if k not in dropped}
        self.env |= {"PYTHONPATH": str(ROOT), "NOTIFY_SOCKET": f"@{name}"}
        self.ready = threading.Event()
        self._closed = False
        self.notify.settimeout(0.2)
        self._reader = threading.Thread(target=self._read_notifications, daemon=True)
        self._reader.start()

    def _read_notifications(self) -> None:
        while not self._closed:
            try:
                if b"READY=1" in self.notify.recv(4096).split(b"\n"):
                    self.ready.set()
            except TimeoutError:
                continue
            except OSError:
                return

    def start(self, *args: str) -> subprocess.Popen[bytes]:
        self.ready.clear()
        with self.log.open("ab") as log:
            return subprocess.Popen(
                [sys.executable, "-m", "agent", "run", "--simulate", "--deliver", "--config",
                 str(self.config), "--data-dir", str(self.data), *args],
                cwd=self.cwd, env=self.env, stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL, stderr=log)

    def wait_ready(self, process: subprocess.Popen[bytes]) -> None:
        deadline = time.monotonic() + READY_TIMEOUT_S
        while time.monotonic() < deadline:
            assert process.poll() is None, f"the agent exited early:\n{self.tail()}"
            if self.ready.wait(0.1):
                return
        raise AssertionError(f"no READY=1 within {READY_TIMEOUT_S}s:\n{self.tail()}")

    def command(self, *args: str) -> subprocess.CompletedProcess[str]:
        env = {k: v for k, v in self.env.items() if k != "NOTIFY_SOCKET"}
        return subprocess.run([sys.executable, "-m", "agent", *args, "--simulate", "--deliver",
                               "--config", str(self.config), "--data-dir", str(self.data)],
                              cwd=self.cwd, env=env, capture_output=True, text=True,
                              timeout=180)

    def tail(self, chars: int = 3000) -> str:
        return self.log.read_text(encoding="utf-8", errors="replace")[-chars:]

    def stats(self) -> tuple[object, dict[str, object]]:
        with Outbox.open_readonly(self.data / "outbox.sqlite") as outbox:
            return outbox.stats(), {c.name: c for c in outbox.upstreams()}

    def close(self) -> None:
        self._closed = True
        self._reader.join()
        self.notify.close()


def station(uplinks: str) -> str:
    return (f'[unit]\nid = "{UNIT}"\nsite = "{SITE}"\n[storage]\ncommit_interval = "1s"\n'
            '[[sensor]]\nid = "air"\ndriver = "bme280"\naddress = 0x76\ninterval = "1s"\n'
            '[[sensor]]\nid = "soil"\ndriver = "sht4x"\naddress = 0x44\ninterval = "1s"\n'
            '[health]\ninterval = "30s"\n' + uplinks)


PREFILL = 30_000  # readings put in the outbox before the kills, so they land mid-publish


def prefill(data: Path) -> set[str]:
    """A backlog of ``PREFILL`` readings of an earlier boot, appended as the agent would."""
    batch = [Reading("air", q, 20.0 + i, "°C", T0 + i * NS, i * NS, "earlier-boot", True)
             for i in range(PREFILL // 3) for q in ("temperature", "humidity", "pressure")]
    with Outbox(data / "outbox.sqlite", max_bytes=256 * 1024**2) as outbox:
        outbox.append(batch)
    return {reading_id(UNIT, r) for r in batch}


def test_sigkills_mid_publish_and_broker_restarts_lose_nothing(tmp_path: Path) -> None:
    seed = int(os.environ.get("ENVAGENT_MQTT_SEED", random.randrange(2**32)))
    rng = random.Random(seed)
    broker = mosquitto.start(mosquitto.require_binary(), tmp_path / "broker")
    creds = credentials_file(tmp_path)
    agent = Agent(tmp_path, station(mqtt_uplink(broker, extra=(
        f'credentials_file = "{creds}"\nmax_message_bytes = 1500\n'))))
    restarts = {KILLS // 3, 2 * KILLS // 3}
    kinds: dict[str, int] = {}
    try:
        with subscribed(broker, "envagent/#", client_id="kill-dashboard") as sub:
            first = agent.start("--duration", "2")  # the outbox, its mark, the cursor
            assert first.wait(60) == 0, agent.tail()
            prefilled = prefill(agent.data)
            for round_no in range(KILLS):
                process = agent.start()
                agent.wait_ready(process)
                if round_no in restarts:  # the broker restarts under the running agent
                    time.sleep(rng.uniform(0.1, 0.5))
                    broker.restart()
                    kind = "after a broker restart"
                    time.sleep(rng.uniform(0.5, 1.5))
                elif rng.random() < 0.6:  # as soon as this round's messages flow: mid-publish
                    seen = sub.received.messages
                    deadline = time.monotonic() + 3
                    while sub.received.messages == seen and time.monotonic() < deadline:
                        time.sleep(0.002)
                    time.sleep(rng.uniform(0, 0.03))
                    kind = "mid-publish"
                else:
                    time.sleep(rng.uniform(0.2, 1.2))
                    kind = "running"
                process.kill()
                process.wait()
                kinds[kind] = kinds.get(kind, 0) + 1
                if (agent.stats()[1]["broker"].backlog  # type: ignore[attr-defined]
                        > 100):
                    kinds["with a backlog"] = kinds.get("with a backlog", 0) + 1
            final = agent.start("--duration", "4")
            assert final.wait(120) == 0, agent.tail()
            synced = agent.command("sync")
            assert synced.returncode == 0, synced.stderr + agent.tail()
            stats, cursors = agent.stats()
            assert (stats.backlog, stats.dropped, stats.rejected) == (0, 0, 0), stats  # type: ignore[attr-defined]
            added = stats.added  # type: ignore[attr-defined]
            sub.wait_for(f"seed {seed}: all {added} readings", lambda got: len(got.readings)
                         >= added, timeout=60)
            got = sub.received.readings
            print(f"seed {seed}: {KILLS} kills {kinds}; {added} readings, "
                  f"{sub.received.messages} messages received")
            assert prefilled <= set(got), f"seed {seed}: {len(prefilled - set(got))} missing"
            assert len(got) == added, f"seed {seed}: {len(got)} ids received, {added} stored"
            twice = [i for i, bodies in got.items() if len(bodies) > 1]
            assert not twice, f"seed {seed}: replays that differ: {twice[:3]}"
            said = [payload for _, payload, _ in sub.received.statuses]
            assert said.count(b"offline") >= KILLS // 2, said  # the will, after a kill
    finally:
        agent.close()
        broker.stop()


def test_an_outage_then_the_backlog_while_a_wrong_password_and_http_go_their_way(
        tmp_path: Path) -> None:
    """Three upstreams: the broker (down for ``OUTAGE_S``), the same broker with a wrong
    password (auth from the start, and it stays so) and an HTTP server: sampling and HTTP go
    on through it all, and the broker gets the whole backlog when it is back."""
    broker = mosquitto.start(mosquitto.require_binary(), tmp_path / "broker")
    good, wrong = credentials_file(tmp_path), credentials_file(
        tmp_path, f"{mosquitto.USER}:not-the-password", "wrong-credentials")
    duration = 12 + OUTAGE_S + 20
    with RecordingServer() as http, subscribed(broker, "envagent/#",
                                               client_id="outage-dashboard") as sub:
        uplinks = (mqtt_uplink(broker, "broker", extra=f'credentials_file = "{good}"\n')
                   + mqtt_uplink(broker, "wrong", extra=f'credentials_file = "{wrong}"\n'
                                                        'auth_retry = "1h"\n')
                   + f'[[uplink]]\nname = "archive"\nurl = "{http.url()}"\nformat = "json"\n'
                     'allow_insecure = true\nflush_interval = "1s"\nbackoff_min = "100ms"\n'
                     'backoff_max = "1s"\n')
        agent = Agent(tmp_path, station(uplinks))
        process = agent.start("--duration", str(duration))
        try:
            agent.wait_ready(process)
            sub.wait_for("the broker receives", lambda got: len(got.readings) > 10)
            broker.stop()
            outage_ends = time.monotonic() + OUTAGE_S
            time.sleep(max(0.0, OUTAGE_S - 8))
            stats, cursors = agent.stats()
            sampled = 5 * (OUTAGE_S - 20)  # the BME280's three and the SHT4x's two a second
            assert cursors["broker"].backlog >= sampled, cursors  # type: ignore[attr-defined]
            assert cursors["archive"].backlog < 40, cursors  # type: ignore[attr-defined]
            wrong_state = UplinkState.load(agent.data / state_file("wrong"))
            broker_state = UplinkState.load(agent.data / state_file("broker"))
            assert wrong_state is not None and wrong_state.state == "auth_blocked"
            assert "not-the-password" not in (wrong_state.last_error or "")
            assert broker_state is not None and broker_state.state == "retrying"
            time.sleep(max(0.0, outage_ends - time.monotonic()))
            broker.start()
            assert process.wait(duration + 60) == 0, agent.tail()
            for name in ("broker", "archive"):
                synced = agent.command("sync", "--uplink", name)
                assert synced.returncode == 0, synced.stderr
            stats, cursors = agent.stats()
            assert cursors["broker"].backlog == 0 and cursors["archive"].backlog == 0  # type: ignore[attr-defined]
            added = stats.added  # type: ignore[attr-defined]
            assert cursors["wrong"].backlog == added  # type: ignore[attr-defined]
            sub.wait_for("the whole backlog", lambda got: len(got.readings) >= added, 60)
            http_ids = {item["id"] for e in http.snapshot() if e.accepted
                        for item in json.loads(e.body)["readings"]}
            assert set(sub.received.readings) == http_ids and len(http_ids) == added
            assert all(len(bodies) == 1 for bodies in sub.received.readings.values())
        finally:
            if process.poll() is None:
                process.kill()
                process.wait()
            agent.close()
            broker.stop()


def test_paho_and_ssl_are_loaded_by_a_connection_only(tmp_path: Path) -> None:
    code = ("import sys, tomllib\nfrom agent.config import parse_config\n"
            "from agent.uplink.transports import build_sink\n"
            f"c = parse_config(tomllib.loads({STATION + mqtt_uplink_text()!r}))\n"
            "s = build_sink(c, c.uplinks[0])\nprint('paho' in sys.modules, 'ssl' in sys.modules)\n")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          cwd=ROOT, timeout=60, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert done.stdout.strip() == "False False", done.stderr


def mqtt_uplink_text() -> str:
    return f'[[uplink]]\nname = "b"\nurl = "{TLS_URL}"\n'


def test_doctor_checks_dns_tcp_tls_and_connect_for_an_mqtt_upstream(broker: Mosquitto,
                                                                      tmp_path: Path) -> None:
    from agent.doctor.report import Status
    from agent.doctor.uplink import check_upstream

    creds = credentials_file(tmp_path)
    config = config_of(mqtt_uplink(broker, extra=f'credentials_file = "{creds}"\n'))
    checks = check_upstream(config, config.uplinks[0], {}, tmp_path / "none")
    assert [(c.name, c.status) for c in checks] == [
        ("uplink broker token", Status.PASS), ("uplink broker dns", Status.PASS),
        ("uplink broker tcp", Status.PASS), ("uplink broker tls", Status.PASS),
        ("uplink broker auth", Status.PASS)], checks
    assert "CONNACK 0x00" in checks[-1].detail and str(creds) in checks[-1].detail
    creds.write_text("envagent:wrong\n")
    auth = check_upstream(config, config.uplinks[0], {}, tmp_path / "none")[-1]
    assert auth.status is Status.FAIL and "wrong" not in auth.detail
