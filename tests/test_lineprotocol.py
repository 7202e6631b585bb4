"""InfluxDB line protocol: exact escaping, one line per sample, honest quality, byte-stable."""

from __future__ import annotations

import gzip
import math

import pytest
from httpfaults import parse_line
from hypothesis import given
from hypothesis import strategies as st

from agent.core.reading import RESERVED_SENSOR_ID, Reading
from agent.uplink.lineprotocol import (
    LineProtocolEncoder,
    escape_key,
    escape_measurement,
    escape_string_field,
    quality_of,
)
from drivers.base import Quality

T0 = 1_767_225_600_000_000_000
SITE = "汉中 wetland, east"
PREFIX = "envagent,driver=bme280,sensor=air,site=汉中\\ wetland\\,\\ east,unit=demo-001 "


def reading(quantity: str = "temperature", value: float = 21.5, *, sensor: str = "air",
            time_ns: int = T0, quality: int = 0, synced: bool | None = True) -> Reading:
    return Reading(sensor, quantity, value, "°C", time_ns, 5_000_000_000, "boot-1", synced,
                   quality)


def encoder(measurement: str = "envagent",
            drivers: dict[str, str] | None = None) -> LineProtocolEncoder:
    return LineProtocolEncoder(unit="demo-001", site=SITE, drivers=drivers or {"air": "bme280"},
                               measurement=measurement)


# --- escaping ----------------------------------------------------------------------------------

# (raw, as a measurement, as a tag key / tag value / field key)
ESCAPES = [
    ("plain", "plain", "plain"),
    ("a b", "a\\ b", "a\\ b"),
    ("a,b", "a\\,b", "a\\,b"),
    ("a=b", "a=b", "a\\=b"),
    ('say "hi"', 'say\\ "hi"', 'say\\ "hi"'),
    (SITE, "汉中\\ wetland\\,\\ east", "汉中\\ wetland\\,\\ east"),
    ("tab\there", "tab\\there", "tab\\there"),  # a literal backslash-t, as Telegraf writes it
    ("line\nbreak\r", "line\\nbreak\\r", "line\\nbreak\\r"),
    ("nul\x00bell\x07", "nul\ufffdbell\ufffd", "nul\ufffdbell\ufffd"),
    ("back\\slash", "back\\slash", "back\\slash"),  # a lone backslash stays literal
    ("ends\\", "ends\\\\", "ends\\\\"),  # ... but never escapes the separator after it
    ("a\\ b", "a\\\\\\ b", "a\\\\\\ b"),
    ("a\\=b", "a\\=b", "a\\\\\\=b"),
]


@pytest.mark.parametrize(("raw", "measurement", "key"), ESCAPES, ids=[e[0] for e in ESCAPES])
def test_escaping_table(raw: str, measurement: str, key: str) -> None:
    assert escape_measurement(raw) == measurement
    assert escape_key(raw) == key


@pytest.mark.parametrize(("raw", "escaped"), [
    ("NaN", '"NaN"'),
    ('say "hi"', '"say \\"hi\\""'),
    ("c:\\temp\\", '"c:\\\\temp\\\\"'),
    ("a, b=c", '"a, b=c"'),  # commas, spaces and equals signs need nothing inside quotes
])
def test_string_field_values_escape_quotes_and_backslashes(raw: str, escaped: str) -> None:
    assert escape_string_field(raw) == escaped


def test_unicode_site_arrives_intact_through_utf8_and_gzip() -> None:
    body = encoder().encode([reading()])
    assert body == (PREFIX + f"temperature=21.5 {T0}\n").encode("utf-8")
    text = gzip.decompress(gzip.compress(body, mtime=0)).decode("utf-8")
    _, tags, _, _ = parse_line(text.rstrip("\n"))
    assert tags == {"driver": "bme280", "sensor": "air", "site": SITE, "unit": "demo-001"}


safe_text = st.text(st.characters(blacklist_categories=("Cs", "Cc"), blacklist_characters="\\"),
                    min_size=1, max_size=30)


@given(site=safe_text, sensor=safe_text, quantity=safe_text, measurement=safe_text)
def test_no_name_can_inject_a_tag_or_field(site: str, sensor: str, quantity: str,
                                           measurement: str) -> None:
    enc = LineProtocolEncoder(unit="u", site=site, drivers={}, measurement=measurement)
    (line,) = enc.lines([reading(quantity, 1.0, sensor=sensor)])
    assert "\n" not in line
    name, tags, fields, stamp = parse_line(line)
    assert name == measurement
    assert tags == {"sensor": sensor, "site": site, "unit": "u"}
    assert fields == {quantity: 1.0}
    assert stamp == T0


@pytest.mark.parametrize("name", ["ends\\", "a\\ b", "a\\,b", "a\\=b", "x\\\\"])
def test_backslashes_never_break_the_line(name: str) -> None:
    enc = LineProtocolEncoder(unit="u", site=name, drivers={}, measurement=name)
    (line,) = enc.lines([reading(name, 2.0, sensor="s")])
    _, tags, fields, stamp = parse_line(line)
    assert set(tags) == {"sensor", "site", "unit"}  # still three tags, one field, a timestamp
    assert list(fields.values()) == [2.0] and stamp == T0


# --- shape --------------------------------------------------------------------------------------


def test_one_line_per_sensor_sample_with_the_quantities_as_fields() -> None:
    batch = [
        reading("temperature", 21.5), reading("humidity", 52.0), reading("pressure", 1003.25),
        reading("temperature", 21.25, time_ns=T0 + 10**10),
        reading("pm2_5", 7.0, sensor="dust"),
    ]
    assert encoder().lines(batch) == [
        PREFIX + f"temperature=21.5,humidity=52.0,pressure=1003.25 {T0}",
        PREFIX + f"temperature=21.25 {T0 + 10**10}",
        # a sensor the config no longer lists: no driver tag, never an empty one
        "envagent,sensor=dust,site=汉中\\ wetland\\,\\ east,unit=demo-001 " + f"pm2_5=7.0 {T0}",
    ]


def test_a_quantity_twice_in_one_sample_opens_a_second_line_instead_of_overwriting() -> None:
    lines = encoder().lines([reading(value=1.0), reading(value=2.0)])
    assert lines == [PREFIX + f"temperature=1.0 {T0}", PREFIX + f"temperature=2.0 {T0}"]


@pytest.mark.parametrize(("value", "text"), [
    (21.0, "21.0"), (-0.0, "-0.0"), (1e-05, "1e-05"), (1.5e16, "1.5e+16"),
    (0.1 + 0.2, "0.30000000000000004"),  # shortest text that reads back to the same double
])
def test_values_are_floats_written_to_round_trip(value: float, text: str) -> None:
    (line,) = encoder().lines([reading(value=value)])
    assert f"temperature={text} " in line
    assert parse_line(line)[2]["temperature"] == value


# --- quality, NaN, clock ------------------------------------------------------------------------


def test_quality_goes_upstream_as_an_integer_field_only_when_not_good() -> None:
    (line,) = encoder().lines([
        reading("temperature", 21.5, quality=Quality.OUT_OF_RANGE | Quality.SPIKE),
        reading("humidity", 50.0),
    ])
    assert line == PREFIX + f"temperature=21.5,temperature_q=10i,humidity=50.0 {T0}"


@pytest.mark.parametrize(("synced", "flagged"), [(False, True), (True, False), (None, False)])
def test_an_unsynchronised_clock_is_flagged_upstream(synced: bool | None, flagged: bool) -> None:
    r = reading(quality=Quality.WARMUP, synced=synced)
    expected = Quality.WARMUP | (Quality.CLOCK_UNSYNCED if flagged else 0)
    assert quality_of(r) == expected
    (line,) = encoder().lines([r])
    assert f"temperature_q={int(expected)}i" in line


@pytest.mark.parametrize(("value", "name"), [(math.nan, "NaN"), (math.inf, "+Inf"),
                                             (-math.inf, "-Inf")])
def test_nan_and_infinities_are_never_sent_as_numbers(value: float, name: str) -> None:
    (line,) = encoder().lines([reading("temperature", value), reading("humidity", 50.0)])
    assert line == (PREFIX + f'temperature_nonfinite="{name}",temperature_q=0i,humidity=50.0 {T0}')
    assert "nan" not in line.lower().replace('"nan"', "") and "inf " not in line.lower()


def test_a_sample_with_only_nan_still_makes_a_well_formed_line() -> None:
    (line,) = encoder().lines([reading("temperature", math.nan, quality=Quality.STUCK)])
    _, _, fields, _ = parse_line(line)
    assert fields == {"temperature_nonfinite": "NaN", "temperature_q": int(Quality.STUCK)}


# --- replay -------------------------------------------------------------------------------------


def test_a_replay_is_byte_identical_even_from_a_fresh_encoder() -> None:
    batch = [reading(q, v, time_ns=T0 + i * 10**9) for i in range(50)
             for q, v in (("temperature", 20 + i / 7), ("humidity", math.nan))]
    first = encoder().encode(batch)
    assert encoder().encode(batch) == first
    assert encoder().encode(list(batch)) == first
    assert first.count(b"\n") == 50


def test_the_measurement_is_configurable_and_escaped() -> None:
    (line,) = encoder("air quality,v2").lines([reading()])
    assert line.startswith("air\\ quality\\,v2,driver=bme280,")


# --- commissioning tags by sample time ----------------------------------------------------------

VISITS = [(T0 + 10, {"mounting_height": "2", "shield": "Stevenson screen"}),
          (T0 + 20, {"mounting_height": "3"})]  # the second visit gave no shield


def test_commissioning_tags_are_those_in_force_at_the_sample_time() -> None:
    enc = encoder()
    enc.set_epochs(list(reversed(VISITS)))  # any order: sorted by time
    batch = [reading(time_ns=T0 + t) for t in (0, 9, 10, 15, 20, 30)]
    lines = enc.lines(batch)
    assert [(tags.get("mounting_height"), tags.get("shield"))
            for _, tags, _, _ in map(parse_line, lines)] == [
        (None, None), (None, None), ("2", "Stevenson screen"), ("2", "Stevenson screen"),
        ("3", None), ("3", None)]
    assert lines[2].startswith("envagent,driver=bme280,mounting_height=2,sensor=air,"
                               "shield=Stevenson\\ screen,site=")  # sorted among the others
    assert lines[0] == encoder().lines([batch[0]])[0]  # before any visit: as without epochs


def test_the_agents_own_readings_carry_no_installation_tags() -> None:
    """Health and alert readings describe the agent, not a mounted sensor: their series stay
    whole across a re-commissioning (and so do a sensor's no longer configured)."""
    enc = encoder()
    enc.set_epochs(VISITS)
    own = [reading(sensor=RESERVED_SENSOR_ID, quantity=q, time_ns=T0 + 20)
           for q in ("uptime", "alert_pm25_high")] + [reading(sensor="gone", time_ns=T0 + 20)]
    for _, tags, _, _ in map(parse_line, enc.lines(own)):
        assert "mounting_height" not in tags and "shield" not in tags
    [(_, tags, _, _)] = map(parse_line, enc.lines([reading(time_ns=T0 + 20)]))
    assert tags["mounting_height"] == "3"  # a configured sensor's, at the same time


@given(st.lists(st.integers(0, 40), min_size=1, max_size=30),
       st.lists(st.integers(0, 40), max_size=4))
def test_a_line_is_the_same_whichever_batch_it_is_encoded_in(times: list[int],
                                                            starts: list[int]) -> None:
    """The per-batch shortcut (one epoch table for a batch within one epoch) never changes a
    line; of two visits at the same time, the one given last is in force."""
    epochs = [(T0 + s, {"shield": f"v{k}"}) for k, s in enumerate(starts)]
    drivers = {f"s{i}": "sht4x" for i in range(len(times))}
    enc, fresh = encoder(drivers=drivers), encoder(drivers=drivers)
    enc.set_epochs(epochs)
    fresh.set_epochs(epochs)
    batch = [reading(sensor=f"s{i}", time_ns=T0 + t) for i, t in enumerate(times)]  # a line each
    alone = [enc.encode([r]) for r in batch]
    assert fresh.encode(batch) == b"".join(alone)
    for t, line in zip(times, alone, strict=True):
        in_force = [k for k, s in enumerate(starts) if s <= t]
        want = max(in_force, key=lambda k: (starts[k], k)) if in_force else None
        shield = parse_line(line.decode().rstrip("\n"))[1].get("shield")
        assert shield == (None if want is None else f"v{want}")
