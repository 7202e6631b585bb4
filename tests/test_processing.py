"""Per-quantity processing: averaging, calibration, plausibility flags, config, and the wiring."""

from __future__ import annotations

import functools
import json
import math
import threading
import tomllib
from collections.abc import Mapping
from pathlib import Path
from typing import ClassVar

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.cli import main as cli
from agent.config import Config, parse_config
from agent.config.processing import PHYSICAL_RANGES, Calibration, Plausible
from agent.core.errors import ConfigError
from agent.core.reading import Reading
from agent.sampling.processing import Processor
from agent.sampling.sampler import SensorWorker
from drivers.base import Driver, Measurement, Quality
from drivers.bme280 import BME280
from drivers.errors import SensorError
from drivers.registry import DRIVERS
from drivers.sim import BME280Model, FakeClock, SimBus

OUT, STUCK, SPIKE, CLIPPED = Quality.OUT_OF_RANGE, Quality.STUCK, Quality.SPIKE, Quality.CLIPPED


class Scripted(Driver):
    """A test driver that plays back prepared samples (a value, or an exception to raise)."""

    name = "scripted"
    addresses = (0x40,)
    quantities: ClassVar[Mapping[str, str]] = {"temperature": "°C", "co2": "ppm", "level": "m"}
    script: list[list[Measurement] | Exception]

    def setup(self) -> None:
        pass

    def read(self) -> list[Measurement]:
        step = self.script.pop(0)
        if isinstance(step, Exception):
            raise step
        return step


def scripted(*steps: list[Measurement] | Exception) -> Scripted:
    driver = Scripted(SimBus(), 0x40, clock=FakeClock())
    driver.script = list(steps)
    return driver


def t(value: float, quality: Quality = Quality.GOOD) -> list[Measurement]:
    return [Measurement("temperature", value, "°C", quality)]


def run(processor: Processor, *values: float) -> list[tuple[float, Quality]]:
    out = []
    for value in values:
        (m,) = processor.sample(functools.partial(t, value))
        out.append((m.value, m.quality))
    return out


# --- calibration -------------------------------------------------------------------------------


def test_offset_linear_and_polynomial_known_values() -> None:
    assert Calibration("c", offset=-0.3).apply(20.0) == pytest.approx(19.7)
    linear = Calibration("c", scale=1.02, offset=-0.1)
    assert linear.apply(25.0) == pytest.approx(25.4)
    assert linear.invert(25.4) == pytest.approx(25.0)  # the raw value is recoverable upstream
    cubic = Calibration("c", polynomial=(1.0, 2.0, 0.5, 0.25))
    assert cubic.apply(2.0) == pytest.approx(1 + 4 + 2 + 2)
    with pytest.raises(ValueError, match="polynomial"):
        cubic.invert(9.0)


def test_calibrated_values_carry_the_calibration_id_and_others_none() -> None:
    processor = Processor(calibration={"temperature": Calibration("air-T-2026-03", offset=-0.3)})
    out = processor.sample(lambda: [*t(21.0), Measurement("co2", 500.0, "ppm")])
    assert [(m.quantity, round(m.value, 6), m.calibration) for m in out] == [
        ("temperature", 20.7, "air-T-2026-03"),
        ("co2", 500.0, None),
    ]


# --- plausibility ------------------------------------------------------------------------------


def test_built_in_physical_range_flags_without_dropping() -> None:
    assert PHYSICAL_RANGES["temperature"] == (-40.0, 85.0)
    assert run(Processor(), 85.0, 85.5, -40.0, -41.0) == [
        (85.0, Quality.GOOD), (85.5, OUT), (-40.0, Quality.GOOD), (-41.0, OUT),
    ]


def test_range_applies_to_the_calibrated_value_and_overrides_merge() -> None:
    processor = Processor(
        calibration={"temperature": Calibration("c", offset=10.0)},
        plausible={"temperature": Plausible(max=60.0)},
    )
    assert run(processor, 49.0, 51.0, -45.0) == [
        (59.0, Quality.GOOD), (61.0, OUT), (-35.0, Quality.GOOD),  # min stays built in
    ]


def test_unknown_quantities_have_no_range_until_configured() -> None:
    processor = Processor(plausible={"level": Plausible(min=0.0)})
    out = processor.sample(lambda: [Measurement("level", -1.0, "m"), Measurement("x", 1e9, "u")])
    assert [m.quality for m in out] == [OUT, Quality.GOOD]


def test_spike_flags_the_jump_and_then_follows_the_new_level() -> None:
    processor = Processor(plausible={"temperature": Plausible(spike=5.0)})
    flags = [q for _, q in run(processor, 20.0, 24.9, 31.0, 31.5, 20.0)]
    assert flags == [Quality.GOOD, Quality.GOOD, SPIKE, Quality.GOOD, SPIKE]


def test_stuck_flags_from_the_nth_identical_value_on() -> None:
    processor = Processor(plausible={"temperature": Plausible(stuck_after=3)})
    flags = [q for _, q in run(processor, 20.0, 20.0, 20.0, 20.0, 20.1, 20.1)]
    assert flags == [Quality.GOOD, Quality.GOOD, STUCK, STUCK, Quality.GOOD, Quality.GOOD]


def test_no_spike_or_stuck_check_by_default() -> None:
    assert {q for _, q in run(Processor(), 0.0, 0.0, 0.0, 80.0, 0.0)} == {Quality.GOOD}


def test_nan_is_out_of_range_and_does_not_disturb_the_history() -> None:
    processor = Processor(plausible={"temperature": Plausible(spike=1.0)})
    assert run(processor, 20.0)[0][1] == Quality.GOOD
    value, quality = run(processor, math.nan)[0]
    assert math.isnan(value) and quality == OUT
    assert run(processor, 20.5) == [(20.5, Quality.GOOD)]


def test_driver_flags_are_kept() -> None:
    (m,) = Processor().sample(lambda: [Measurement("humidity", 100.0, "%RH", CLIPPED)])
    assert m.quality == CLIPPED


# --- averaging ---------------------------------------------------------------------------------


def test_average_is_the_mean_of_n_reads_with_flags_ored() -> None:
    driver = scripted(t(20.0), t(21.0, CLIPPED), t(22.0), t(23.0), t(30.0))
    (m,) = Processor(average=4).sample(driver.read)
    assert (m.value, m.quality) == (21.5, CLIPPED)
    assert len(driver.script) == 1  # exactly four reads


def test_a_failed_read_fails_the_whole_attempt() -> None:
    driver = scripted(t(20.0), OSError(121, "Remote I/O error"), t(22.0))
    with pytest.raises(OSError):
        Processor(average=3).sample(driver.read)


def test_samples_with_different_quantities_cannot_be_averaged() -> None:
    driver = scripted(t(20.0), [Measurement("co2", 1.0, "ppm")])
    with pytest.raises(SensorError, match="cannot average"):
        Processor(average=2).sample(driver.read)


# --- config ------------------------------------------------------------------------------------

HEAD = (
    '[unit]\nid = "u"\nsite = "roof"\n[[sensor]]\nid = "air"\ndriver = "bme280"\naddress = 0x76\n'
)


def config_of(text: str) -> Config:
    return parse_config(tomllib.loads(HEAD + text), drivers=DRIVERS)


def test_processing_config_is_read_into_the_sensor() -> None:
    (sensor,) = config_of(
        "average = 4\n"
        '[sensor.calibration.temperature]\nid = "air-T-2026-03"\noffset = -0.3\n'
        '[sensor.calibration.humidity]\nid = "air-H-1"\nscale = 1.02\noffset = -0.1\n'
        '[sensor.calibration.pressure]\nid = "air-P-1"\npolynomial = [0.5, 1, 1e-6]\n'
        "[sensor.plausible.temperature]\nmin = -40.0\nmax = 60\nspike = 5\nstuck_after = 30\n"
    ).sensors
    assert sensor.average == 4
    assert dict(sensor.calibration) == {
        "temperature": Calibration("air-T-2026-03", -0.3, 1.0),
        "humidity": Calibration("air-H-1", -0.1, 1.02),
        "pressure": Calibration("air-P-1", 0.0, 1.0, (0.5, 1.0, 1e-6)),
    }
    assert dict(sensor.plausible) == {"temperature": Plausible(-40.0, 60.0, 5.0, 30)}
    assert (config_of("").sensors[0].average, dict(config_of("").sensors[0].plausible)) == (1, {})


CAL = "[sensor.calibration.temperature]\n"
PLAUS = "[sensor.plausible.temperature]\n"
QUANTITIES = "expected temperature, humidity, pressure"
POLY = "expected 2 to 6 numbers [c0, c1, ...] for value = c0 + c1·x + c2·x² ..."


@pytest.mark.parametrize(
    ("text", "line"),
    [
        ("average = 0\n", "sensor 'air': average = 0: expected an integer from 1 to 100 (driver "
                          "reads "
         "per reading)"),
        ("average = 101\n", "sensor 'air': average = 101: expected an integer from 1 to 100 "
                            "(driver "
         "reads per reading)"),
        ("average = 2.5\n", "sensor 'air': average = 2.5: expected an integer from 1 to 100 "
                            "(driver "
         "reads per reading)"),
        ('[sensor.calibration.co2]\nid = "x"\noffset = 1\n',
         f"sensor 'air': calibration.co2: unknown quantity for driver bme280; {QUANTITIES}"),
        ("[sensor.plausible.humidty]\nmax = 90\n",
         f"sensor 'air': plausible.humidty: unknown quantity for driver bme280; {QUANTITIES}"),
        ("calibration = 1\n",
         "sensor 'air': calibration = 1: expected tables such as [sensor.calibration.temperature]"),
        ("plausible = { temperature = 5 }\n",
         "sensor 'air': plausible.temperature = 5: expected a table "
         "[sensor.plausible.temperature]"),
        (CAL + "offset = 1\n",
         'sensor \'air\': calibration.temperature.id: missing; add it, such as id = '
         '"air-T-2026-03"'),
        (CAL + 'id = "c"\n', "sensor 'air': calibration.temperature: expected offset, scale or "
         "polynomial (offset = 0.0 records no correction)"),
        (CAL + 'id = "c"\npolynomial = []\n',
         f"sensor 'air': calibration.temperature.polynomial = []: {POLY}"),
        (CAL + 'id = "c"\npolynomial = [0.5]\n',  # a constant: every reading would be 0.5
         "sensor 'air': calibration.temperature.polynomial = [0.5]: a single number would replace "
         "every value by that constant; to add it, write offset = 0.5 instead, or give "
         f"{POLY[9:]}"),
        (CAL + 'id = "c"\npolynomial = ["x"]\n',
         f'sensor \'air\': calibration.temperature.polynomial = ["x"]: {POLY}'),
        (CAL + 'id = "c"\npolynomial = [1, 2, 3, 4, 5, 6, 7]\n',  # shown cut
         f"sensor 'air': calibration.temperature.polynomial = [1, 2, 3, 4, 5]: {POLY}"),
        (CAL + 'id = "c"\npolynomial = [1, "2"]\n',
         f'sensor \'air\': calibration.temperature.polynomial = [1, "2"]: {POLY}'),
        (CAL + 'id = "c"\npolynomial = [0, 1]\noffset = 1\n',
         "sensor 'air': calibration.temperature: polynomial replaces offset and scale; write them "
         "as "
         "its c0 and c1"),
        (CAL + 'id = "c"\nscale = 0\n', "sensor 'air': calibration.temperature.scale = 0: "
                                        "expected a "
         "number other than 0 (a scale of 0 would erase every reading)"),
        (CAL + 'id = "c"\noffset = nan\n',
         "sensor 'air': calibration.temperature.offset = nan: expected a finite number"),
        (CAL + 'id = "c"\noffset = "0.5"\n', 'sensor \'air\': calibration.temperature.offset = '
                                             '"0.5": '
         "expected a number; write 0.5 without quotes"),
        (CAL + 'id = "T 1"\noffset = 1\n', 'sensor \'air\': calibration.temperature.id = "T 1": '
                                           'expected '
         "1 to 64 letters, digits, '.', '_' or '-', starting with a letter or digit"),
        (CAL + 'id = "c"\noffset = 1\ngain = 2\n', "sensor 'air': calibration.temperature.gain: "
         "unknown key; valid keys are id, offset, scale, polynomial"),
        (PLAUS + "min = 90\n",
         "sensor 'air': plausible.temperature: min 90 must be below max 85 (built in)"),
        (PLAUS + "min = 10\nmax = 10\n",
         "sensor 'air': plausible.temperature: min 10 must be below max 10"),
        (PLAUS + "spike = 0\n",
         "sensor 'air': plausible.temperature.spike = 0: expected a number above 0"),
        (PLAUS + "stuck_after = 1\n", "sensor 'air': plausible.temperature.stuck_after = 1: "
                                      "expected "
         "an integer from 2 to 1000000"),
        (PLAUS + "maximum = 1\n", "sensor 'air': plausible.temperature.maximum: unknown key; valid "
         "keys are min, max, spike, stuck_after"),
    ],
)
def test_processing_config_errors_are_one_line_each(text: str, line: str) -> None:
    with pytest.raises(ConfigError) as caught:
        config_of(text)
    assert caught.value.problems == [f"config: {line}"]


def test_every_processing_problem_is_reported_at_once() -> None:
    with pytest.raises(ConfigError) as caught:
        config_of("average = 0\n" + CAL + "scale = 0\n" + "[sensor.plausible.co2]\n")
    assert len(caught.value.problems) == 4  # average, calibration id, scale, unknown quantity


scalars = st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8)
values = st.recursive(
    scalars.filter(lambda v: v is not None),
    lambda inner: st.lists(inner, max_size=7) | st.dictionaries(st.text(max_size=12), inner,
                                                                max_size=4),
    max_leaves=12,
)
names = st.sampled_from(["temperature", "humidity", "co2", "id", "offset", "scale", "polynomial",
                         "min", "max", "spike", "stuck_after", ""])
tables = st.dictionaries(names, values | st.dictionaries(names, values, max_size=4), max_size=4)


@settings(max_examples=300, deadline=None)
@given(st.dictionaries(
    st.sampled_from(["average", "mux", "channel", "calibration", "plausible", "address"]),
    values | tables, max_size=5,
))
def test_any_processing_or_mux_value_gives_a_config_or_a_config_error(
    extra: dict[str, object],
) -> None:
    data = tomllib.loads(HEAD)
    data["sensor"][0].update(extra)
    try:
        config = parse_config(data, drivers=DRIVERS)
    except ConfigError as e:
        assert e.problems and all(line.splitlines() == [line] for line in e.problems)
    else:
        Processor.for_sensor(config.sensors[0])  # whatever validates also builds


# --- wiring: the sampler and `envagent read` ---------------------------------------------------


def test_the_sampler_stores_processed_values_with_their_calibration_id() -> None:
    (sensor,) = config_of(
        "average = 2\n"
        '[sensor.calibration.temperature]\nid = "air-T-2026-03"\noffset = -0.5\n'
        "[sensor.plausible.pressure]\nmax = 1000\n"
    ).sensors
    clock = FakeClock()
    bus = SimBus(1, clock=clock)
    model = BME280Model(clock=clock, temperature=22.0, humidity=40.0, pressure=1013.0)
    bus.attach(0x76, model)
    delivered: list[Reading] = []
    worker = SensorWorker(
        sensor, BME280(bus, 0x76, clock=clock), clock=clock, deliver=delivered.extend,
        boot_id="b", stop=threading.Event(),
    )
    worker.driver.setup()
    before = model.conversions
    worker.sample()
    assert model.conversions - before == 2  # averaged over two forced measurements
    got = {r.quantity: r for r in delivered}
    assert got["temperature"].value == pytest.approx(21.5, abs=0.01)
    assert got["temperature"].calibration == "air-T-2026-03"
    assert got["humidity"].calibration is None and got["humidity"].quality == 0
    assert got["pressure"].value == pytest.approx(1013.0, abs=0.05)
    assert got["pressure"].quality == int(OUT)  # stored, flagged


def test_envagent_read_shows_processed_values(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    config = tmp_path / "cal.toml"
    config.write_text(HEAD + '[sensor.calibration.temperature]\nid = "plus-1000"\noffset = 1000\n')
    assert cli.main(["read", "--simulate", "--config", str(config), "--json"]) == 0
    rows = {r["quantity"]: r for r in json.loads(capsys.readouterr().out)}
    assert rows["temperature"]["calibration"] == "plus-1000"
    assert 950 < rows["temperature"]["value"] < 1050
    assert rows["temperature"]["quality"] == int(OUT)
    assert rows["pressure"]["calibration"] is None
