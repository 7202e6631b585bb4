"""A register-level model of the TI ADS1115 16-bit ADC, and its wiring into the simulated world.

Section and table numbers refer to TI SBAS444D (ADS111x datasheet, 2018). The model has the four
registers behind the pointer register (9.6), the config register's power-on value 0x8583, the
OS bit's start/status meaning, single-shot (convert once, power down) and continuous modes, the
multiplexer (four single-ended inputs and four differential pairs), the PGA's full-scale ranges
and the data rates, all on the bus's clock. A conversion result is the input voltage at the end
of the conversion as a two's-complement code, clipping at 0x7FFF / 0x8000 (9.3.3).

Simplifications: no noise, offset or gain error; an input is not limited to the supply rails;
in continuous mode a config write restarts the conversion cycle; reads beyond the two bytes of a
register return 0xFF; a write of two bytes (pointer + half a register) only sets the pointer.

Inputs are volts per input: fixed (``set_voltage``), or ``wiring`` -- functions of the
environment's :class:`Conditions` that give a probe's output voltage -- used while a ``source``
is set. :func:`world_model` builds the wiring from a sensor's options so the simulated world
feeds each configured probe the environment's value of its quantity.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Callable, Mapping
from typing import Any

from drivers.ads1115 import LinearScale, parse_channels
from drivers.clock import Clock, SystemClock
from drivers.sim.environment import Conditions, Source

REG_CONVERSION = 0x00
REG_CONFIG = 0x01
REG_LO_THRESH = 0x02
REG_HI_THRESH = 0x03
_POINTER_MASK = 0b11  # P[1:0]; bits 7:2 are reserved, written 0 (9.6.1)

CONFIG_RESET = 0x8583  # table 8
LO_THRESH_RESET = 0x8000  # 9.6.4
HI_THRESH_RESET = 0x7FFF
OS = 1 << 15
MODE_SINGLE_SHOT = 1 << 8
# MUX[2:0] -> (positive input, negative input); None is GND (table 8).
MUX = ((0, 1), (0, 3), (1, 3), (2, 3), (0, None), (1, None), (2, None), (3, None))
# PGA[2:0] -> full-scale range in volts (table 8).
FULL_SCALE_V = (6.144, 4.096, 2.048, 1.024, 0.512, 0.256, 0.256, 0.256)
# DR[2:0] -> samples per second (table 8).
DATA_RATE_SPS = (8, 16, 32, 64, 128, 250, 475, 860)
CODE_MAX = 0x7FFF
CODE_MIN = -0x8000
_IDLE_BYTE = 0xFF
_TIME_EPSILON = 1e-9  # of a period: float sums like 1000.0 + 2.3 - 1000.0 < 2.3

Wire = Callable[[Conditions], float]


class ADS1115Model:
    """An ADS1115 behind one address; implements :class:`drivers.sim.simbus.SimDevice`.

    ``oscillator`` scales the data rate (0.9: a part whose conversions take 10 % longer, the
    datasheet's limit). Faults: ``hung`` -- a started conversion never finishes, OS stays 0;
    ``frozen`` -- conversions finish but the conversion register keeps its old value.
    """

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        source: Source | None = None,
        voltages: tuple[float, float, float, float] = (0.0, 0.0, 0.0, 0.0),
        wiring: Mapping[int, Wire] | None = None,
        oscillator: float = 1.0,
    ) -> None:
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.source = source
        self.wiring = dict(wiring or {})
        self.voltages = list(voltages)
        self.oscillator = oscillator
        self.hung = False
        self.frozen = False
        self._lock = threading.RLock()
        self.power_on_reset()

    def power_on_reset(self) -> None:
        """Registers to their power-on values (9.4.1); powered down in single-shot mode."""
        with self._lock:
            self.pointer = REG_CONVERSION
            self.config = CONFIG_RESET & ~OS
            self.thresholds = [LO_THRESH_RESET, HI_THRESH_RESET]
            self.code = 0  # "cleared to 0 ... until the first conversion is completed"
            self.conversions = 0
            self._started: float | None = None  # start of the running conversion

    def set_voltage(self, channel: int, volts: float) -> None:
        with self._lock:
            self._advance(self.clock.monotonic())
            self.voltages[channel] = volts

    def conversion_time(self) -> float:
        return 1.0 / (DATA_RATE_SPS[self.config >> 5 & 0b111] * self.oscillator)

    @property
    def converting(self) -> bool:
        with self._lock:
            self._advance(self.clock.monotonic())
            return self._started is not None

    # --- SimDevice ------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        if not data:
            return
        with self._lock:
            now = self.clock.monotonic()
            self._advance(now)
            self.pointer = data[0] & _POINTER_MASK
            if len(data) < 3:
                return
            value = data[1] << 8 | data[2]
            if self.pointer == REG_CONFIG:
                self._write_config(value, now)
            elif self.pointer in (REG_LO_THRESH, REG_HI_THRESH):
                self.thresholds[self.pointer - REG_LO_THRESH] = value

    def read(self, length: int) -> bytes:
        with self._lock:
            self._advance(self.clock.monotonic())
            word = self._register(self.pointer).to_bytes(2, "big")
            return (word + bytes([_IDLE_BYTE]) * max(0, length - 2))[:length]

    # --- chip -----------------------------------------------------------------------------------

    def _register(self, pointer: int) -> int:
        if pointer == REG_CONVERSION:
            return self.code & 0xFFFF
        if pointer == REG_CONFIG:
            busy = self._started is not None or not self.config & MODE_SINGLE_SHOT
            return self.config & ~OS | (0 if busy else OS)  # OS reads 0 while converting
        return self.thresholds[pointer - REG_LO_THRESH]

    def _write_config(self, value: int, now: float) -> None:
        single_shot = bool(value & MODE_SINGLE_SHOT)
        if single_shot and self._started is not None:
            self.config = value & ~OS  # "writing 1 to OS during a conversion has no effect"
            return
        self.config = value & ~OS
        if not single_shot or value & OS:
            self._started = now

    def _advance(self, now: float) -> None:
        """Complete the conversions that ended by ``now``; the last one sets the result."""
        if self._started is None or self.hung:
            return
        period = self.conversion_time()
        done = math.floor((now - self._started) / period + _TIME_EPSILON)
        if done < 1:
            return
        single_shot = bool(self.config & MODE_SINGLE_SHOT)
        if single_shot:
            done = 1
        end = self._started + done * period
        if not self.frozen:
            self.code = self._code(self.clock.time() - (now - end))
        self.conversions += done
        self._started = None if single_shot else end

    def _code(self, wall_time: float) -> int:
        positive, negative = MUX[self.config >> 12 & 0b111]
        full_scale = FULL_SCALE_V[self.config >> 9 & 0b111]
        conditions = self.source(wall_time) if self.source is not None else None
        volts = self._input(positive, conditions)
        if negative is not None:
            volts -= self._input(negative, conditions)
        exact = volts / full_scale * (CODE_MAX + 1)
        if not math.isfinite(exact):
            return CODE_MAX if exact > 0 else CODE_MIN
        return min(CODE_MAX, max(CODE_MIN, round(exact)))

    def _input(self, channel: int, conditions: Conditions | None) -> float:
        wire = self.wiring.get(channel)
        if conditions is not None and wire is not None:
            return wire(conditions)
        return self.voltages[channel]


# --- the simulated world ------------------------------------------------------------------------

# Environment quantities a probe can report, by the name a config gives in channelN_quantity.
QUANTITIES: dict[str, Wire] = {
    "soil_moisture": lambda c: c.soil_moisture,
    "water_level": lambda c: c.water_level,
    "illuminance": lambda c: c.illuminance,
    "temperature": lambda c: c.temperature,
    "humidity": lambda c: c.humidity,
    "pressure": lambda c: c.pressure,
}
# What a configuration without options (or an older world builder) gets: a capacitive soil
# moisture probe on AIN0 (~2.8 V in dry air, ~1.2 V in water at 3.3 V) and a 4-20 mA level
# transducer for 0-5 m on a 150 Ω shunt on AIN1 (0.6 V at 0 m, 3.0 V at 5 m).
SOIL_PROBE = LinearScale(2.8, 0.0, 1.2, 100.0)
LEVEL_TRANSDUCER = LinearScale(0.6, 0.0, 3.0, 5.0)
DEFAULT_WIRING: dict[int, Wire] = {
    0: lambda c: SOIL_PROBE.volts(c.soil_moisture),
    1: lambda c: LEVEL_TRANSDUCER.volts(c.water_level),
}
UNWIRED_VOLTS = 1.65  # a channel whose quantity the environment does not have: mid-supply


def world_model(
    *, clock: Clock, source: Source | None, options: Mapping[str, Any] | None = None
) -> ADS1115Model:
    """The ADS1115 for ``build_world``: each configured channel wired to its quantity.

    A channel whose ``channelN_scale`` is set gets the voltage that the calibration maps to the
    environment's value of ``channelN_quantity`` -- so the real driver reads that value back.
    Without options, :data:`DEFAULT_WIRING` applies.
    """
    if options is None:
        return ADS1115Model(clock=clock, source=source, wiring=DEFAULT_WIRING)
    wiring: dict[int, Wire] = {}
    channels, _ = parse_channels(options)
    for channel in channels:
        quantity = QUANTITIES.get(channel.quantity)
        if channel.scale is not None and quantity is not None:
            wiring[channel.number] = _probe(channel.scale, quantity)
        else:
            wiring[channel.number] = lambda c: UNWIRED_VOLTS
    return ADS1115Model(clock=clock, source=source, wiring=wiring)


def _probe(scale: LinearScale, quantity: Wire) -> Wire:
    return lambda conditions: scale.volts(quantity(conditions))
