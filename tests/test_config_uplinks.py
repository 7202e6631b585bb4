"""Several upstreams in one config: ``[[uplink]]`` tables, and today's single ``[uplink]`` as the
one upstream ``default`` (issue 13, point 1). Problems are asserted as the exact lines a
technician reads from ``envagent config check``."""

from __future__ import annotations

import re
import tomllib
from pathlib import Path

import pytest

from agent.config import (
    AGENT_HEALTH_QUANTITIES,
    SENSOR_HEALTH_QUANTITIES,
    Config,
    UplinkConfig,
    load_config,
    parse_config,
)
from agent.core.errors import ConfigError
from agent.store.station import public_url

ROOT = Path(__file__).resolve().parents[1]
EXAMPLE = ROOT / "config" / "envagent.example.toml"
SRC = "station.toml"

STATION = """\
[unit]
id = "u1"
site = "Roof"

[[sensor]]
id = "air"
driver = "bme280"
address = 0x76

[[sensor]]
id = "dust"
driver = "pmsa003i"
address = 0x12

[[alert]]
id = "pm25_high"
sensor = "dust"
quantity = "pm2_5"
above = 75
"""
VM = "https://vm.example.org:8428/write"
INFLUX = "https://influx.example.edu:8086/api/v2/write?org=lab&bucket=pm"
VALID_KEYS = (
    "valid keys are url, format, allow_insecure, token_file, auth, ca_file, client_cert, "
    "client_key, measurement, batch_size, flush_interval, connect_timeout, read_timeout, "
    "deadline, backoff_min, backoff_max, retry_after_max, auth_retry, name, sensors, "
    "quantities, agent_readings, start"
)
SECRET_HOWTO = (
    "a secret never goes in the config file; put the token in a file readable only by the "
    "agent's user and name it with uplink.token_file, or use "
    "LoadCredential=upload-token:/etc/envagent/upload-token in the systemd unit"
)
SUPPORTED = ("an https:// URL, http:// to this machine with allow_insecure = true, "
             "hj212://host:port (HJ 212-2017) or mqtts://host[:port] (MQTT)")


def load(tmp_path: Path, text: str) -> Config:
    path = tmp_path / SRC
    path.write_text(STATION + text, encoding="utf-8")
    return load_config(path)


def problems(tmp_path: Path, text: str) -> list[str]:
    """The problem lines of the station plus ``text``, without the file name in front."""
    path = tmp_path / SRC
    path.write_text(STATION + text, encoding="utf-8")
    with pytest.raises(ConfigError) as caught:
        load_config(path)
    assert all(line.startswith(f"{path}: ") for line in caught.value.problems)
    return [line.removeprefix(f"{path}: ") for line in caught.value.problems]


def line(text: str, needle: str, nth: int = 1) -> int:
    """The line number, in the whole file, of the ``nth`` line of ``text`` holding ``needle``."""
    found = [n for n, row in enumerate(text.split("\n"), 1) if needle in row]
    return STATION.count("\n") + found[nth - 1]


# --- today's [uplink] ------------------------------------------------------------------------


TODAYS_UPLINK = f"""
[uplink]
url = "{INFLUX}"
format = "json"
allow_insecure_http = false
token_file = "/etc/envagent/upload-token"
auth = "bearer"
ca_file = "/etc/envagent/ca.pem"
client_cert = "/etc/envagent/client.pem"
client_key = "/etc/envagent/client.key"
measurement = "station"
batch_size = 2000
flush_interval = "30s"
connect_timeout = "5s"
read_timeout = "20s"
deadline = "45s"
backoff_min = "2s"
backoff_max = "10m"
retry_after_max = "1h"
auth_retry = "15m"
"""


def test_todays_single_uplink_is_one_upstream_named_default_with_the_same_values(
    tmp_path: Path,
) -> None:
    config = load(tmp_path, TODAYS_UPLINK)
    assert config.uplinks == (UplinkConfig(
        url=INFLUX, name="default", format="json", allow_insecure=False,
        token_file=Path("/etc/envagent/upload-token"), auth="bearer",
        ca_file=Path("/etc/envagent/ca.pem"), client_cert=Path("/etc/envagent/client.pem"),
        client_key=Path("/etc/envagent/client.key"), measurement="station", batch_size=2000,
        flush_interval=30.0, connect_timeout=5.0, read_timeout=20.0, deadline=45.0,
        backoff_min=2.0, backoff_max=600.0, retry_after_max=3600.0, auth_retry=900.0,
        sensors=None, quantities=None, agent_readings=True, start="oldest",
    ),)
    # and its mistakes read as before: by the key's TOML path
    assert problems(tmp_path, TODAYS_UPLINK + "colour = 1\n") == [
        f"uplink.colour: unknown key; {VALID_KEYS}",
    ]


def test_no_uplink_means_sample_and_store_only(tmp_path: Path) -> None:
    config = load(tmp_path, "")
    assert config.uplinks == ()


def test_the_single_table_may_name_its_upstream(tmp_path: Path) -> None:
    (uplink,) = load(tmp_path, f'[uplink]\nname = "network"\nurl = "{VM}"\n').uplinks
    assert uplink.name == "network"


# --- several upstreams -----------------------------------------------------------------------


TWO = f"""
[[uplink]]
name = "network"
url = "{VM}"
auth = "bearer"

[[uplink]]
name = "partner"
url = "{INFLUX}"
token_file = "/etc/envagent/partner-token"
sensors = ["dust"]
quantities = ["pm2_5", "pm10"]
agent_readings = false
start = "now"
batch_size = 1000
"""


def test_two_upstreams_each_with_its_own_settings(tmp_path: Path) -> None:
    network, partner = load(tmp_path, TWO).uplinks
    assert network == UplinkConfig(url=VM, name="network", auth="bearer")
    assert partner == UplinkConfig(
        url=INFLUX, name="partner", token_file=Path("/etc/envagent/partner-token"),
        sensors=("dust",), quantities=("pm2_5", "pm10"), agent_readings=False, start="now",
        batch_size=1000,
    )


def test_start_is_oldest_unless_now(tmp_path: Path) -> None:
    network, partner = load(tmp_path, TWO).uplinks
    assert (network.start, partner.start) == ("oldest", "now")
    text = f'[[uplink]]\nname = "a"\nurl = "{VM}"\nstart = "newest"\n'
    assert problems(tmp_path, text) == [
        f'uplink \'a\' (line {line(text, "start")}): start = "newest": expected one of '
        '"oldest", "now"',
    ]


def test_every_quantity_the_station_can_send_may_be_selected(tmp_path: Path) -> None:
    wanted = ["pm1", "temperature", *SENSOR_HEALTH_QUANTITIES, *AGENT_HEALTH_QUANTITIES,
              "alert_pm25_high"]
    listed = ", ".join(f'"{q}"' for q in wanted)
    (uplink,) = load(tmp_path, f'[[uplink]]\nname = "a"\nurl = "{VM}"\nquantities = [{listed}]\n'
                     'sensors = ["air", "dust", "envagent"]\n').uplinks
    assert uplink.quantities == tuple(wanted)


# --- which readings an upstream takes --------------------------------------------------------


def selects(sensors: tuple[str, ...] | None = None, quantities: tuple[str, ...] | None = None,
            agent_readings: bool = True) -> UplinkConfig:
    return UplinkConfig(url=VM, sensors=sensors, quantities=quantities,
                        agent_readings=agent_readings)


TAKES = [
    # upstream, (sensor, quantity), takes it
    (selects(), ("air", "temperature"), True),
    (selects(), ("envagent", "uptime"), True),
    (selects(agent_readings=False), ("envagent", "uptime"), True),  # nothing selects: all
    (selects(("dust",)), ("dust", "pm2_5"), True),
    (selects(("dust",)), ("dust", "sensor_state"), True),  # a sensor's health is the sensor's
    (selects(("dust",)), ("air", "temperature"), False),
    (selects(("dust",)), ("air", "sensor_state"), False),
    (selects(("dust",)), ("envagent", "backlog"), True),  # agent_readings
    (selects(("dust",)), ("envagent", "alert_pm25_high"), True),
    (selects(("dust",)), ("envagent@partner", "uplink_state"), True),  # about one upstream
    (selects(("dust",), agent_readings=False), ("envagent", "backlog"), False),
    (selects(("dust",), agent_readings=False), ("envagent@network", "uplink_state"), False),
    (selects(("dust", "envagent"), agent_readings=False), ("envagent", "backlog"), True),
    (selects(("envagent",), agent_readings=False), ("envagent@network", "uplink_state"), True),
    (selects(quantities=("pm2_5",)), ("dust", "pm2_5"), True),
    (selects(quantities=("pm2_5",)), ("dust", "pm10"), False),
    (selects(quantities=("pm2_5",)), ("envagent", "uptime"), True),  # agent_readings
    (selects(quantities=("pm2_5",), agent_readings=False), ("envagent", "uptime"), False),
    (selects(quantities=("pm2_5", "uptime"), agent_readings=False), ("envagent", "uptime"),
     True),
    (selects(("dust",), ("pm2_5",)), ("dust", "pm2_5"), True),  # both: a reading matches both
    (selects(("dust",), ("pm2_5",)), ("dust", "pm10"), False),
    (selects(("dust",), ("pm2_5",)), ("other", "pm2_5"), False),
    (selects(("dust",), ("pm2_5",), agent_readings=False), ("envagent", "alert_pm25_high"),
     False),
    (selects(("envagentx",)), ("envagentx", "temperature"), True),  # not the agent: a sensor
    (selects(("dust",)), ("envagentx", "temperature"), False),
    (selects(("dust",)), ("envagent@", "uplink_state"), False),  # no upstream named: a sensor
]


@pytest.mark.parametrize(("uplink", "reading", "expected"), TAKES,
                         ids=[f"{u.sensors}-{u.quantities}-{u.agent_readings}-{r}"
                              for u, r, _ in TAKES])
def test_takes(uplink: UplinkConfig, reading: tuple[str, str], expected: bool) -> None:
    assert uplink.takes(*reading) is expected


def test_the_example_upstreams_take_what_their_comments_say(tmp_path: Path) -> None:
    """The commented-out [[uplink]] examples (two HTTP servers, an MQTT broker), switched on as
    their comments say, are valid against the example station and split the readings as
    described."""
    text = EXAMPLE.read_text(encoding="utf-8")
    start = text.index("# [[uplink]]\n")
    end = text.index("# ---", start)
    switched_on = [row[2:] for row in text[start:end].splitlines()
                   if re.fullmatch(r"# (\[\[uplink\]\]|\w+ = .*)", row)]
    path = tmp_path / "example.toml"
    path.write_text(text[:start] + "\n".join(switched_on) + "\n" + text[end:], encoding="utf-8")
    network, partner, bureau, broker = load_config(path).uplinks
    assert (network.name, partner.name, partner.start) == ("network", "partner", "now")
    assert bureau.hj212 is not None and (bureau.hj212.mn, bureau.hj212.minute_interval) == (
        "33010000000HJ0001", 10)
    assert broker.mqtt is not None and broker.url == "mqtts://broker.example.org:8883"
    readings = [("dust", "pm2_5"), ("air", "temperature"), ("envagent", "uptime"),
                ("dust", "sensor_state")]
    assert [network.takes(*r) for r in readings] == [True, True, True, True]
    assert [partner.takes(*r) for r in readings] == [True, False, False, True]


# --- mistakes: one line each, naming the upstream, the key and its line ----------------------


def test_a_name_is_required_in_the_array_form(tmp_path: Path) -> None:
    text = f'[[uplink]]\nurl = "{VM}"\n'
    assert problems(tmp_path, text) == [
        f'uplink[0] (line {line(text, "[[uplink]]")}): name: missing; add it, such as '
        'name = "network"',
    ]


@pytest.mark.parametrize("name", ["Network", "vm.1", "", "a" * 33, "net work", "ü"])
def test_a_name_must_be_strict(tmp_path: Path, name: str) -> None:
    text = f'[[uplink]]\nname = "{name}"\nurl = "{VM}"\n'
    assert problems(tmp_path, text) == [
        f'uplink[0] (line {line(text, "name =")}): name = "{name}": expected 1 to 32 lowercase '
        "letters, digits, '_' or '-' (it names the upstream in logs, status, health readings "
        "and state files)",
    ]


def test_the_longest_name_and_every_allowed_character_pass(tmp_path: Path) -> None:
    names = ["a" * 32, "0_-z"]
    text = "".join(f'[[uplink]]\nname = "{n}"\nurl = "{VM}"\n' for n in names)
    assert [u.name for u in load(tmp_path, text).uplinks] == names


def test_a_name_used_twice(tmp_path: Path) -> None:
    text = (f'[[uplink]]\nname = "vm"\nurl = "{VM}"\n'
            f'[[uplink]]\nname = "vm"\nurl = "{INFLUX}"\n')
    assert problems(tmp_path, text) == [
        f'uplink \'vm\' (line {line(text, "name =", 2)}): name = "vm": already used by an '
        f'earlier [[uplink]] (line {line(text, "[[uplink]]")}); give each upstream its own name',
    ]


def test_an_unknown_key_in_the_second_upstream_names_it_and_its_line(tmp_path: Path) -> None:
    text = TWO + "colour = 1\n"
    assert problems(tmp_path, text) == [
        f"uplink 'partner' (line {line(text, 'colour')}): colour: unknown key; {VALID_KEYS}",
    ]


def test_an_unnamed_upstream_is_named_by_its_place(tmp_path: Path) -> None:
    text = TWO.replace('name = "partner"\n', "") + "colour = 1\n"
    assert problems(tmp_path, text) == [
        f"uplink[1] (line {line(text, 'colour')}): colour: unknown key; {VALID_KEYS}",
        f"uplink[1] (line {line(text, '[[uplink]]', 2)}): name: missing; add it, such as "
        'name = "network"',
    ]


@pytest.mark.parametrize("url", ["mqtts://broker.example.org:8883",
                                 "MQTTS://broker.example.org"])
def test_an_mqtt_broker_is_an_upstream(tmp_path: Path, url: str) -> None:
    (uplink,) = load(tmp_path, f'[[uplink]]\nname = "broker"\nurl = "{url}"\n').uplinks
    assert uplink.mqtt is not None and uplink.url == url


@pytest.mark.parametrize(("url", "why"), [
    ("ftp://x.org/write", f"expected {SUPPORTED}; ftp:// is not a transport envagent knows"),
    ("vm.example.org:8428/write", f'expected {SUPPORTED}, such as "https://influx.example.org'
     ':8086/api/v2/write?org=eco&bucket=field"'),
])
def test_an_unknown_scheme_says_which_are_supported(tmp_path: Path, url: str, why: str) -> None:
    text = f'[[uplink]]\nname = "a"\nurl = "{url}"\n'
    assert problems(tmp_path, text) == [f'uplink \'a\' (line {line(text, "url")}): '
                                        f'url = "{url}": {why}']


@pytest.mark.parametrize("param", ["p", "token", "access_token", "api_key", "api-key",
                                   "X-Api-Key", "apikey", "auth_token", "access_key", "key",
                                   "secret", "sig", "signature", "Signature"])
def test_a_credential_parameter_in_a_url_is_refused_and_masked(tmp_path: Path,
                                                               param: str) -> None:
    url = f"{VM}?db=field&{param}=hunter2"
    text = f'[[uplink]]\nname = "a"\nurl = "{url}"\n'
    assert problems(tmp_path, text) == [
        f'uplink \'a\' (line {line(text, "url")}): url = "{VM}?db=field&{param}=***": carries '
        f"credentials ({param.lower()}=); they never go in the config file: "
        + SECRET_HOWTO.removeprefix("a secret never goes in the config file; ")]
    assert public_url(url) == f"{VM}?db=field"  # and never into the station record


def test_credentials_in_an_mqtt_url_are_refused_unshown(tmp_path: Path) -> None:
    text = '[[uplink]]\nname = "a"\nurl = "mqtts://envagent:hunter2@broker.example.org"\n'
    (problem,) = problems(tmp_path, text)
    assert "hunter2" not in problem and "has a user name or password in it" in problem


def test_a_secret_key_in_an_upstream_is_refused_unshown(tmp_path: Path) -> None:
    text = TWO + 'token = "hunter2"\n'
    assert problems(tmp_path, text) == [
        f"uplink 'partner' (line {line(text, 'token =')}): token: {SECRET_HOWTO}",
    ]


PLAIN_HTTP = "http://127.0.0.1:8428/write"


def test_allow_insecure_permits_plain_http_to_this_machine_only(tmp_path: Path) -> None:
    (uplink,) = load(tmp_path, f'[[uplink]]\nname = "a"\nurl = "{PLAIN_HTTP}"\n'
                     "allow_insecure = true\n").uplinks
    assert uplink.allow_insecure is True and uplink.url == PLAIN_HTTP
    text = '[[uplink]]\nname = "a"\nurl = "http://10.0.0.5:8428/write"\nallow_insecure = true\n'
    assert problems(tmp_path, text) == [
        f'uplink \'a\' (line {line(text, "url")}): url = "http://10.0.0.5:8428/write": '
        "allow_insecure allows plain http only to this machine (127.0.0.1, ::1 or localhost); "
        "use https:// for any other host",
    ]


def test_plain_http_without_the_switch_names_the_new_key(tmp_path: Path) -> None:
    assert problems(tmp_path, f'[uplink]\nurl = "{PLAIN_HTTP}"\n') == [
        f'uplink.url = "{PLAIN_HTTP}": plain http sends readings and the token unencrypted; '
        "use https://, or for a collector on this machine set allow_insecure = true and a "
        "loopback host",
    ]


@pytest.mark.parametrize("keys", [
    "allow_insecure_http = true\n",
    "allow_insecure = true\nallow_insecure_http = true\n",
])
def test_allow_insecure_http_is_still_the_same_setting(tmp_path: Path, keys: str) -> None:
    for table in (f'[uplink]\nurl = "{PLAIN_HTTP}"\n',
                  f'[[uplink]]\nname = "a"\nurl = "{PLAIN_HTTP}"\n'):
        (uplink,) = load(tmp_path, table + keys).uplinks
        assert uplink.allow_insecure is True


def test_allow_insecure_and_its_old_name_disagreeing_is_a_mistake(tmp_path: Path) -> None:
    text = (f'[[uplink]]\nname = "a"\nurl = "{VM}"\nallow_insecure = true\n'
            "allow_insecure_http = false\n")
    assert problems(tmp_path, text) == [
        f"uplink 'a' (line {line(text, 'allow_insecure_http')}): allow_insecure_http = false: "
        "is the old name of allow_insecure, which says true; keep only allow_insecure",
    ]


def test_an_unknown_sensor_names_the_ones_there_are(tmp_path: Path) -> None:
    text = f'[[uplink]]\nname = "a"\nurl = "{VM}"\nsensors = ["dust", "pm", "Air"]\n'
    assert problems(tmp_path, text) == [
        f'uplink \'a\' (line {line(text, "sensors")}): sensors = ["dust", "pm", "Air"]: no '
        '[[sensor]] has the id "pm", "Air"; expected ids of this station\'s sensors ("air", '
        '"dust") or "envagent" (the agent\'s own health and alert readings)',
    ]


def test_an_unknown_quantity_names_the_ones_there_are(tmp_path: Path) -> None:
    text = f'[[uplink]]\nname = "a"\nurl = "{VM}"\nquantities = ["pm25", "pm10"]\n'
    known = ", ".join(["temperature", "humidity", "pressure", *SENSOR_HEALTH_QUANTITIES,
                       "pm1", "pm2_5", "pm10", *AGENT_HEALTH_QUANTITIES, "alert_pm25_high"])
    assert problems(tmp_path, text) == [
        f'uplink \'a\' (line {line(text, "quantities")}): quantities = ["pm25", "pm10"]: no '
        f'sensor of this station reports "pm25"; expected one of {known}',
    ]


def test_a_quantity_none_of_the_selected_sensors_reports(tmp_path: Path) -> None:
    text = (f'[[uplink]]\nname = "a"\nurl = "{VM}"\nsensors = ["dust"]\n'
            'quantities = ["pm2_5", "temperature"]\n')
    assert problems(tmp_path, text) == [
        f'uplink \'a\' (line {line(text, "quantities")}): quantities = ["pm2_5", "temperature"]:'
        ' no sensor it takes reports "temperature"; expected one of pm1, pm2_5, pm10, '
        "sensor_state, sensor_errors",
    ]


@pytest.mark.parametrize("key", ["sensors", "quantities"])
def test_an_empty_selection_is_a_mistake(tmp_path: Path, key: str) -> None:
    text = f'[[uplink]]\nname = "a"\nurl = "{VM}"\n{key} = []\n'
    assert problems(tmp_path, text) == [
        f"uplink 'a' (line {line(text, key)}): {key} = []: an empty list takes nothing; leave "
        "the key out to take them all",
    ]


def test_a_selection_must_be_a_list_of_names(tmp_path: Path) -> None:
    text = f'[uplink]\nurl = "{VM}"\nsensors = "dust"\n'
    assert problems(tmp_path, text) == [
        'uplink.sensors = "dust": expected a list of quoted names such as ["air", "dust"]',
    ]


def test_uplink_must_be_tables(tmp_path: Path) -> None:
    data = tomllib.loads(STATION)
    for value, expected in [
        (1, "uplink = 1: expected [[uplink]] tables, one per upstream (or a single table "
            "[uplink])"),
        ([1], "uplink[0] = 1: expected an [[uplink]] table"),
    ]:
        with pytest.raises(ConfigError) as caught:
            parse_config({**data, "uplink": value}, source=SRC)
        assert caught.value.problems == [f"{SRC}: {expected}"]


@pytest.mark.parametrize(("text", "table", "array"), [
    (f'[uplink]\nurl = "{VM}"\n\n[[uplink]]\nname = "b"\nurl = "{INFLUX}"\n', 1, 4),
    (f'[[uplink]]\nname = "b"\nurl = "{INFLUX}"\n[uplink]\nurl = "{VM}"\n', 4, 1),
])
def test_the_single_table_and_the_array_together_are_named_as_such(
    tmp_path: Path, text: str, table: int, array: int
) -> None:
    first = STATION.count("\n")
    assert problems(tmp_path, text) == [
        f"invalid TOML: [uplink] (line {first + table}) and [[uplink]] (line {first + array}) "
        "cannot be mixed in one file; write each uplink as its own [[uplink]] table with its own "
        'name = "..." (the [uplink] table was "default")',
    ]
    # an earlier, other mistake keeps tomllib's words
    text = f'[uplink]\nurl = "{VM}"\nurl = "{VM}"\n[[uplink]]\nname = "b"\n'
    (problem,) = problems(tmp_path, text)
    assert problem.startswith("invalid TOML: Cannot overwrite a value") and "mixed" not in problem


# --- the agent's own quantities ----------------------------------------------------------------


def test_the_agents_quantities_are_the_ones_agent_health_sends(tmp_path: Path) -> None:
    from agent.runtime.health import HEALTH_SENSOR, HealthReporter
    from agent.sampling.daemon import Agent
    from agent.store.outbox import Outbox
    from drivers.sim.clock import FakeClock

    config = parse_config(tomllib.loads('[unit]\nid = "u1"\nsite = "Roof"\n'))
    clock = FakeClock(start=100.0, wall=1_767_225_600.0, synced=True)
    io = tmp_path / "io"
    io.write_text("rchar: 1\nwchar: 2\nwrite_bytes: 4096\n", encoding="utf-8")
    thermal = tmp_path / "temp"
    thermal.write_text("48312\n", encoding="utf-8")
    with Outbox(tmp_path / "outbox.sqlite", max_bytes=4 * 1024**2) as outbox:
        agent = Agent(config, [], outbox=outbox, clock=clock, boot_id="b00t")
        readings = HealthReporter(agent, outbox, (), clock=clock, boot_id="b00t", io_path=io,
                                  thermal_path=thermal).sample()
    sent = {r.quantity for r in readings if r.sensor == HEALTH_SENSOR}
    # uplink_state comes only with an upstream (under envagent@<name>)
    assert sent | {"uplink_state"} == set(AGENT_HEALTH_QUANTITIES)
