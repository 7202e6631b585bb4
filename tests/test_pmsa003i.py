"""The PMSA003I driver and frame decoding against the frame-level model (Plantower manual V2.6)."""

from __future__ import annotations

import errno
import statistics
import threading
from pathlib import Path
from typing import Any

import pytest

from agent.config import parse_config
from agent.sampling.sampler import SensorWorker, State
from agent.store.outbox import Outbox
from drivers.base import Quality
from drivers.errors import SensorError, WrongChipError
from drivers.pmsa003i import (
    PMSA003I,
    Frame,
    FrameError,
    checksum,
    decode_frame,
    encode_frame,
    identify,
)
from drivers.registry import DRIVERS
from drivers.sim.clock import FakeClock
from drivers.sim.environment import Environment
from drivers.sim.pmsa003i import FRAME_PERIOD_S, PMSA003IModel
from drivers.sim.simbus import Nack, SimBus
from drivers.sim.world import build_world

ADDRESS = 0x12
HOUR = 3600.0
# Start 424d, length 28, CF=1 5/12/20, atmospheric 5/12/20 µg/m³, counts 1000/300/60/8/2/1,
# version 0x97, error 0, checksum = sum of the 30 bytes before it = 0x02eb.
FRAME = bytes.fromhex(
    "424d001c" "0005000c0014" "0005000c0014" "03e8012c003c000800020001" "9700" "02eb"
)


def rig(**inputs: float) -> tuple[SimBus, PMSA003IModel, PMSA003I, FakeClock]:
    clock = FakeClock()
    bus = SimBus(1, clock=clock)
    model = PMSA003IModel(clock=clock, **inputs)
    bus.attach(ADDRESS, model)
    clock.advance(FRAME_PERIOD_S)  # the first frame
    return bus, model, PMSA003I(bus, ADDRESS, clock=clock), clock


def values(driver: PMSA003I) -> dict[str, tuple[float, str, Quality]]:
    return {m.quantity: (m.value, m.unit, m.quality) for m in driver.read()}


# --- frames ---------------------------------------------------------------------------------------


def test_a_known_frame_decodes_field_by_field() -> None:
    assert checksum(FRAME) == 0x02EB
    frame = decode_frame(FRAME)
    assert frame == Frame(5, 12, 20, 5, 12, 20, (1000, 300, 60, 8, 2, 1), 0x97, 0)
    assert encode_frame(frame) == FRAME


@pytest.mark.parametrize(
    ("data", "why"),
    [
        (b"\x42\x4e" + FRAME[2:], "bad start bytes 424e"),
        (FRAME[:3] + b"\x1d" + FRAME[4:], r"frame length 29 \(expected 28\)"),
        (FRAME[:-1] + b"\xec", "checksum 0x02ec does not match the data's 0x02eb"),
        (FRAME[:4] + b"\x00\x06" + FRAME[6:], "checksum 0x02eb does not match the data's 0x02ec"),
        (bytes(32), "all zeros"),  # whose checksum 0 is "right": start bytes come first
        (FRAME[:31], "expected 32 bytes, got 31"),
    ],
)
def test_bad_frames_are_refused(data: bytes, why: str) -> None:
    with pytest.raises(FrameError, match=why):
        decode_frame(data)


# --- values through the real driver -------------------------------------------------------------


def test_concentrations_come_back_and_warmup_is_flagged_for_30_s() -> None:
    _, model, driver, clock = rig(pm1=3.2, pm2_5=8.6, pm10=14.0)
    clock.advance(60.0)  # the fan has settled
    driver.setup()
    got = values(driver)
    assert got == {
        "pm1": (3.0, "µg/m³", Quality.WARMUP),
        "pm2_5": (9.0, "µg/m³", Quality.WARMUP),
        "pm10": (14.0, "µg/m³", Quality.WARMUP),
    }
    clock.advance(29.0)
    assert values(driver)["pm10"][2] == Quality.WARMUP
    model.pm1, model.pm2_5, model.pm10 = 40.0, 75.4, 120.0
    clock.advance(1.0 + FRAME_PERIOD_S)
    assert values(driver) == {
        "pm1": (40.0, "µg/m³", Quality.GOOD),
        "pm2_5": (75.0, "µg/m³", Quality.GOOD),
        "pm10": (120.0, "µg/m³", Quality.GOOD),
    }


def test_beyond_the_effective_range_is_flagged() -> None:
    _, _, driver, clock = rig(pm1=400.0, pm2_5=650.0, pm10=900.0)
    clock.advance(60.0)
    driver.setup()
    clock.advance(30.0)
    got = values(driver)
    assert got["pm1"][2] == Quality.GOOD
    assert got["pm2_5"] == (650.0, "µg/m³", Quality.OUT_OF_RANGE)


def test_the_model_updates_its_frame_once_per_period_and_reads_wrap() -> None:
    bus, model, _, clock = rig(pm2_5=10.0)
    clock.advance(60.0)
    first = bus.read(ADDRESS, 32)
    model.pm2_5 = 20.0
    assert bus.read(ADDRESS, 32) == first  # the next frame is not out yet
    clock.advance(FRAME_PERIOD_S)
    assert decode_frame(bus.read(ADDRESS, 32)).pm2_5 == 20
    bus.write(ADDRESS, b"\x0c")  # the register pointer: PM2.5 atmospheric
    assert bus.read(ADDRESS, 2) == b"\x00\x14"


def test_source_is_sampled_at_each_frame() -> None:
    clock = FakeClock(wall=1_767_225_600.0)
    environment = Environment(seed=8)
    bus = SimBus(1, clock=clock)
    bus.attach(ADDRESS, PMSA003IModel(clock=clock, source=environment.source_for("dust")))
    driver = PMSA003I(bus, ADDRESS, clock=clock)
    clock.advance(60.0)
    driver.setup()
    for _ in range(5):
        clock.advance(3 * HOUR)
        truth = environment.conditions(clock.time())
        got = values(driver)
        assert got["pm2_5"][0] == pytest.approx(truth.pm2_5, abs=1.0)
        assert got["pm10"][0] == pytest.approx(truth.pm10, abs=1.0)


# --- faults: a failed read raises and yields nothing ---------------------------------------------


@pytest.mark.parametrize(
    ("fault", "why"),
    [("checksum", "checksum 0x"), ("bad_start", "bad start bytes 4200"), ("zeros", "all zeros")],
)
def test_bad_frames_fail_the_read(fault: str, why: str) -> None:
    _, model, driver, clock = rig(pm2_5=12.0)
    clock.advance(60.0)
    driver.setup()
    model.fault = fault
    with pytest.raises(SensorError, match=f"pmsa003i at 1:0x12: .*{why}"):
        driver.read()
    model.fault = None
    assert values(driver)["pm2_5"][0] == 12.0


def test_an_error_code_fails_the_read_and_a_nack_keeps_the_errno() -> None:
    bus, model, driver, clock = rig(pm2_5=12.0)
    driver.setup()
    model.error_code = 0x04
    clock.advance(FRAME_PERIOD_S)
    with pytest.raises(SensorError, match="reports error code 0x04"):
        driver.read()
    bus.inject(ADDRESS, Nack())
    with pytest.raises(OSError) as caught:
        driver.read()
    assert caught.value.errno == errno.EREMOTEIO


def test_setup_waits_for_the_first_frame_and_refuses_another_chip() -> None:
    clock = FakeClock()
    bus = SimBus(1, clock=clock)
    bus.attach(ADDRESS, PMSA003IModel(clock=clock))
    driver = PMSA003I(bus, ADDRESS, clock=clock)
    with pytest.raises(SensorError, match="no data yet") as caught:
        driver.setup()  # just powered: registers read zeros
    assert not isinstance(caught.value, WrongChipError)
    clock.advance(FRAME_PERIOD_S)
    driver.setup()
    with pytest.raises(SensorError, match="read\\(\\) before setup"):
        PMSA003I(bus, ADDRESS, clock=clock).read()
    bus.detach(ADDRESS)

    class Other:
        def write(self, data: bytes) -> None: ...
        def read(self, length: int) -> bytes:
            return bytes(range(1, length + 1))

    bus.attach(ADDRESS, Other())
    with pytest.raises(WrongChipError, match="no Plantower frame"):
        driver.setup()


def test_identify() -> None:
    bus, model, _, clock = rig()
    assert identify(bus, ADDRESS) == "pmsa003i"
    model.fault = "checksum"  # start and length still say what it is
    assert identify(bus, ADDRESS) == "pmsa003i"
    model.fault = "zeros"
    assert identify(bus, ADDRESS) is None
    assert identify(bus, 0x13) is None


# --- the agent ------------------------------------------------------------------------------------


def test_through_the_agent_values_are_stored_and_faults_only_warn(tmp_path: Path) -> None:
    sensor_table: dict[str, Any] = {
        "id": "dust", "driver": "pmsa003i", "address": ADDRESS, "interval": "60s",
        "plausible": {"pm2_5": {"stuck_after": 3}},
    }
    cfg = parse_config({"unit": {"id": "u1", "site": "roof"}, "sensor": [sensor_table]})
    sensor = cfg.sensors[0]
    clock = FakeClock()
    buses = build_world([(1, ADDRESS, "pmsa003i", "dust")], clock=clock,
                        environment=Environment())
    model = buses[1].devices[ADDRESS]
    assert isinstance(model, PMSA003IModel)
    model.source = None
    with Outbox(tmp_path / "o.sqlite", max_bytes=1024**2) as outbox:
        driver = DRIVERS[sensor.driver](buses[1], sensor.address, clock=clock)
        worker = SensorWorker(sensor, driver, clock=clock, deliver=outbox.append,
                              boot_id="b00t", stop=threading.Event())
        clock.advance(60.0)  # the sensor has been running; the agent starts now
        assert worker._try_setup()
        for step, pm2_5 in enumerate((8.0, 15.0, 33.0)):
            model.pm1, model.pm2_5, model.pm10 = pm2_5 / 2, pm2_5, pm2_5 * 2
            clock.advance(25.0)
            worker.sample()
            latest = {v.quantity: v for v in outbox.latest()}
            assert latest["pm2_5"].value == pm2_5 and latest["pm2_5"].unit == "µg/m³"
            assert latest["pm10"].value == 2 * pm2_5
            assert latest["pm2_5"].quality == (Quality.WARMUP if step == 0 else 0)
        added = outbox.stats().added
        for fault in ("checksum", "zeros"):
            model.fault = fault
            worker.sample()
            assert worker.health.state is State.WARNING
        assert outbox.stats().added == added
        model.fault, model.frozen = None, True  # a frozen frame is only caught over time
        for _ in range(3):
            clock.advance(60.0)
            worker.sample()
        latest = {v.quantity: v for v in outbox.latest()}
        assert latest["pm2_5"].quality & Quality.STUCK


# --- the environment's particulates --------------------------------------------------------------


def test_environment_pm_is_ordered_seeded_and_peaks_at_rush_hours() -> None:
    environment = Environment(seed=6, longitude=0.0)
    start = 1_767_225_600.0  # midnight UTC = solar midnight at longitude 0
    by_hour: dict[int, list[float]] = {h: [] for h in range(24)}
    for day in range(60):
        for hour in range(24):
            c = environment.conditions(start + day * 86_400 + hour * HOUR)
            assert 0 < c.pm1 <= c.pm2_5 <= c.pm10
            by_hour[hour].append(c.pm2_5)
    median = {h: statistics.median(v) for h, v in by_hour.items()}
    assert median[8] > 1.4 * median[14] and median[20] > 1.3 * median[14]
    assert Environment(seed=7).conditions(start).pm2_5 != environment.conditions(start).pm2_5
