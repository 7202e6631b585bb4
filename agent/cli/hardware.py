"""``envagent read`` and ``scan``: the buses, real or simulated, and what answers on them."""

from __future__ import annotations

import argparse
import contextlib
import sys
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

from agent.cli.context import (
    EXIT_FAILURE,
    EXIT_OK,
    SIM_WIRING_NEEDS_SIMULATE,
    SimFault,
    clock_of,
    context_of,
    print_json,
)
from agent.config import Config
from agent.core.errors import ConfigError
from drivers.bus import Bus
from drivers.clock import Clock


def _inject(buses: Mapping[int, Any], config: Config, fault: SimFault) -> None:
    from drivers.sim.simbus import BusIOError, Nack, Timeout

    sensor = next((s for s in config.sensors if s.id == fault.sensor), None)
    if sensor is None:
        raise ConfigError([f"--sim-fault: no sensor {fault.sensor!r} in {config.source}"])
    kinds = {"hang": Timeout(count=None, duration=3600.0), "nack": Nack(count=None),
             "eio": BusIOError(count=None)}
    timer = threading.Timer(fault.after, buses[sensor.bus].inject,
                            (sensor.address, kinds[fault.kind]))
    timer.daemon = True
    timer.start()


@contextmanager
def open_buses(
    config: Config, clock: Clock, *, simulate: bool, faults: Sequence[SimFault] = (),
    wiring: Path | None = None,
) -> Iterator[dict[int, Bus]]:
    """One Bus per bus number the config uses: the simulated world, or /dev/i2c-N.

    ``wiring`` (``--sim-wiring``): the simulated world holds the devices that file lists, not
    the configured sensors, to rehearse a wiring mistake (drivers.sim.wiring).
    """
    if faults and not simulate:
        raise ConfigError(["--sim-fault needs --simulate"])
    if wiring is not None and not simulate:
        raise ConfigError([SIM_WIRING_NEEDS_SIMULATE])
    if simulate:
        from drivers.sim.environment import Environment
        from drivers.sim.world import Placement, build_world

        unit = config.unit
        environment = Environment(
            latitude=unit.latitude, longitude=unit.longitude, elevation_m=unit.elevation_m or 0.0
        )
        placements = [
            Placement(s.bus, s.address, s.driver, s.id, s.mux, s.channel) for s in config.sensors
        ]
        if wiring is not None:
            from agent.config import load_wiring
            from drivers.sim.wiring import wired_placements

            placements = wired_placements(load_wiring(wiring), placements)
        world = build_world(placements, clock=clock, environment=environment,
                            options={s.id: s.options for s in config.sensors}, log_length=0,
                            buses={s.bus for s in config.sensors})
        for fault in faults:
            _inject(world, config, fault)
        yield dict(world)
        return
    from drivers.bus import SMBus2Bus

    buses: dict[int, Bus] = {}
    try:
        for number in sorted({s.bus for s in config.sensors}):
            buses[number] = SMBus2Bus(number)
        yield buses
    finally:
        for bus in buses.values():
            bus.close()


def cmd_read(args: argparse.Namespace) -> int:
    from agent.core import quality
    from agent.sampling.daemon import make_drivers
    from agent.sampling.processing import Processor
    from drivers.bus import describe_error
    from drivers.registry import DRIVERS

    ctx = context_of(args)
    clock = clock_of(args)
    rows: list[dict[str, Any]] = []
    failed = False
    with open_buses(ctx.config, clock, simulate=ctx.simulate, wiring=args.sim_wiring) as buses:
        drivers = make_drivers(ctx.config, buses, clock, DRIVERS)
        for sensor, driver in zip(ctx.config.sensors, drivers, strict=True):
            try:
                driver.setup()
                measurements = Processor.for_sensor(sensor).sample(driver.read)
            except Exception as exc:  # noqa: BLE001 - report every sensor, then exit 1
                failed = True
                print(f"{sensor.id}: {describe_error(exc, driver.where)}", file=sys.stderr)
                continue
            finally:
                with contextlib.suppress(Exception):  # as doctor and commission: never the cause
                    driver.close()
            rows += [
                {"sensor": sensor.id, "quantity": m.quantity, "value": m.value, "unit": m.unit,
                 "quality": int(m.quality), "flags": quality.names(m.quality),
                 "calibration": m.calibration}
                for m in measurements
            ]
    if args.json:
        print_json(rows)
    else:
        for r in rows:
            # the flags in words, so a clipped or out-of-range value never reads as a good one
            flags = f"  {quality.words(r['quality'])}" if r["quality"] else ""
            cal = f"  (calibration {r['calibration']})" if r["calibration"] else ""
            print(f"{r['sensor']:<12} {r['quantity']:<14} {r['value']:>10.2f} {r['unit']}{flags}"
                  f"{cal}")
    return EXIT_FAILURE if failed else EXIT_OK


def cmd_scan(args: argparse.Namespace) -> int:
    from drivers.registry import IDENTIFIERS
    from drivers.scan import scan

    clock = clock_of(args)
    if args.simulate:
        ctx = context_of(args)
        cm = open_buses(ctx.config, clock, simulate=True, wiring=args.sim_wiring)
    else:
        cm = _real_bus(args.bus)
    with cm as buses:
        bus = buses.get(args.bus)
        found = scan(bus, IDENTIFIERS) if bus is not None else []
    # Devices behind a multiplexer also carry "mux" and "channel"; the bus's own leave them out.
    rows: list[dict[str, Any]] = [
        {"bus": args.bus, "address": f.address, "chip": f.chip}
        | ({} if f.mux is None else {"mux": f.mux, "channel": f.channel})
        for f in found
    ]
    if args.json:
        print_json(rows)
    elif not rows:
        print(f"no device answered on bus {args.bus}")
    else:
        for r in rows:
            via = f"  (mux 0x{r['mux']:02x} channel {r['channel']})" if "mux" in r else ""
            print(f"{r['bus']}:0x{r['address']:02x}  {r['chip'] or 'unknown'}{via}")
    return EXIT_OK


@contextmanager
def _real_bus(number: int) -> Iterator[dict[int, Bus]]:
    from drivers.bus import SMBus2Bus

    bus = SMBus2Bus(number)
    try:
        yield {number: bus}
    finally:
        bus.close()


def uses_gpio(config: Config) -> bool:
    """A status LED, a button or a sensor's power switch: only then is gpiozero loaded."""
    return config.indicator is not None or any(s.power_pin is not None for s in config.sensors)


def mock_pin_factory() -> Any:
    """gpiozero's mock pins: the status LED, button and power switches of a simulated unit."""
    from gpiozero.pins.mock import MockFactory

    return MockFactory()
