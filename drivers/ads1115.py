"""TI ADS1115 16-bit ADC: one single-shot conversion per configured input, scaled to a quantity.

Each enabled channel is read single-ended (AINn against GND) with its own full-scale range, and
reported either in volts or, through two calibration points, as the probe's quantity (a soil
moisture probe: 2.8 V dry = 0 %, 1.2 V wet = 100 %). A value outside the calibrated span is
extrapolated and flagged OUT_OF_RANGE; a code at the end of the ADC's scale is flagged CLIPPED.

Per conversion: write the config register with OS=1 (the chip powers up, converts once and
powers down), wait one conversion time, poll OS until it reads 1 or the deadline passes, check
that the config reads back as written (a brown-out reset or corrupted reads show here), then
read the conversion register. ``trigger`` starts the first input; ``collect`` reads it and starts
the next (raising :class:`~drivers.base.Pending` with its ready time) until every input is read.
With ``average = N`` the conversions run at ``data_rate / N`` where the chip has that rate
(:meth:`ADS1115.oversample`): one conversion per input, N times as long. The bus lock is not held
across the wait (up to 139 ms at 8 SPS): each message is atomic, and nothing else talks to this
address meanwhile.

Options are flat keys (``channel0_quantity``, ``channel0_gain``, ...) because the config's
``[[sensor]]`` tables hold one value per option; rules that span several keys (two calibration
points, unique quantities, at least one channel) are in :meth:`ADS1115.check_options`, which
config validation calls so that mistakes are reported before anything starts.

Register and bit names: TI SBAS444 (ADS111x datasheet, rev. D 2018), section 9.6.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, ClassVar

from drivers.base import Driver, Measurement, Option, Pending, Quality
from drivers.bus import Bus
from drivers.errors import DriverConfigError, SensorError, SensorTimeoutError, WrongChipError

REG_CONVERSION = 0x00
REG_CONFIG = 0x01
REG_LO_THRESH = 0x02
REG_HI_THRESH = 0x03

# Config register fields (9.6.3, table 8).
OS = 1 << 15  # write 1: start a single conversion; reads 0 while converting
MUX_SHIFT = 12
MUX_SINGLE_ENDED = 0b100  # 100..111: AIN0..AIN3 against GND
PGA_SHIFT = 9
MODE_SINGLE_SHOT = 1 << 8
DR_SHIFT = 5
COMP_QUE_DISABLE = 0b11  # comparator off, ALERT/RDY high impedance
_COMP_MASK = 0x1F  # COMP_MODE, COMP_POL, COMP_LAT, COMP_QUE[1:0]

CONFIG_RESET = 0x8583  # power-on value (table 8)
LO_THRESH_RESET = 0x8000  # 9.6.4
HI_THRESH_RESET = 0x7FFF

# Full-scale range in volts -> PGA code; 101..111 all mean ±0.256 V (table 8).
GAINS = {6.144: 0b000, 4.096: 0b001, 2.048: 0b010, 1.024: 0b011, 0.512: 0b100, 0.256: 0b101}
# Samples per second -> DR code (table 8).
DATA_RATES = {8: 0, 16: 1, 32: 2, 64: 3, 128: 4, 250: 5, 475: 6, 860: 7}
# The internal oscillator makes the data rate vary by up to ±10 % (table 7.5, "DR variation").
DATA_RATE_TOLERANCE = 0.10
CODE_MAX = 0x7FFF  # positive full scale; the output clips here (9.3.3)
CODE_MIN = -0x8000  # negative full scale
CODES_PER_FULL_SCALE = 1 << 15

CHANNELS = range(4)
POLL_INTERVAL_S = 0.001
DEADLINE_MARGIN_S = 0.05  # on top of the slowest conversion before it counts as hung

QUANTITY_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,31}")  # safe in line protocol and as a key
UNIT_PATTERN = re.compile(r"[^\s\"'\\,=]{1,16}")  # "%", "m", "µg/m³"; no line-protocol syntax
VOLTS = "V"
DEFAULT_GAIN = 4.096


def conversion_time(data_rate: int) -> float:
    """Seconds a single conversion may take at most: 1/DR with the oscillator 10 % slow."""
    return 1.0 / (data_rate * (1.0 - DATA_RATE_TOLERANCE))


def config_word(channel: int, gain: float, data_rate: int, *, start: bool = True) -> int:
    """The config register for one single-ended single-shot conversion, comparator off."""
    return (
        (OS if start else 0)
        | (MUX_SINGLE_ENDED | channel) << MUX_SHIFT
        | GAINS[gain] << PGA_SHIFT
        | MODE_SINGLE_SHOT
        | DATA_RATES[data_rate] << DR_SHIFT
        | COMP_QUE_DISABLE
    )


def volts_from_code(code: int, gain: float) -> float:
    """The input voltage of a signed 16-bit conversion result at full-scale range ``gain``."""
    return code * gain / CODES_PER_FULL_SCALE


def signed(word: bytes) -> int:
    return int.from_bytes(word[:2], "big", signed=True)


@dataclass(frozen=True)
class LinearScale:
    """Two calibration points (volts, value); linear between and, flagged, beyond them."""

    v1: float
    value1: float
    v2: float
    value2: float

    def __call__(self, volts: float) -> tuple[float, bool]:
        """(value, whether it was extrapolated outside the calibrated span)."""
        slope = (self.value2 - self.value1) / (self.v2 - self.v1)
        value = self.value1 + (volts - self.v1) * slope
        return value, not min(self.v1, self.v2) <= volts <= max(self.v1, self.v2)

    def volts(self, value: float) -> float:
        """The inverse: the voltage a probe at ``value`` puts out (used by the simulated world)."""
        return self.v1 + (value - self.value1) * (self.v2 - self.v1) / (self.value2 - self.value1)


@dataclass(frozen=True)
class Channel:
    """One enabled input: what it measures, in which unit, at which full-scale range."""

    number: int
    quantity: str
    unit: str
    gain: float
    scale: LinearScale | None


def channel_options() -> dict[str, Option]:
    options: dict[str, Option] = {}
    for n in CHANNELS:
        options |= {
            f"channel{n}_quantity": Option(
                str, "", f'what AIN{n} measures, e.g. "soil_moisture"; empty: AIN{n} is not read'
            ),
            f"channel{n}_unit": Option(
                str, VOLTS, f"unit of the value; anything but V needs channel{n}_scale"
            ),
            f"channel{n}_gain": Option(
                float, DEFAULT_GAIN, "full-scale range in volts", choices=tuple(GAINS)
            ),
            f"channel{n}_scale": Option(
                list, (), "two [volts, value] calibration points, e.g. [[2.8, 0.0], [1.2, 100.0]]"
                "; empty: report volts",
            ),
        }
    return options


def parse_channels(options: Mapping[str, Any]) -> tuple[list[Channel], list[tuple[str, str]]]:
    """The enabled channels, and (key, problem) for every rule the options break."""
    problems: list[tuple[str, str]] = []
    channels: list[Channel] = []
    seen: dict[str, int] = {}
    defaults = channel_options()
    for n in CHANNELS:
        keys = {part: f"channel{n}_{part}" for part in ("quantity", "unit", "gain", "scale")}
        get = {part: options.get(key, defaults[key].default) for part, key in keys.items()}
        quantity, unit, scale_points = get["quantity"], get["unit"], get["scale"]
        if quantity == "":
            changed = [k for part, k in keys.items() if not _is_default(get[part], defaults[k])]
            if changed:
                problems.append((changed[0], f"AIN{n} is not read because {keys['quantity']} is "
                                 f"empty; set {keys['quantity']} or remove {changed[0]}"))
            continue
        if not isinstance(quantity, str) or not QUANTITY_PATTERN.fullmatch(quantity):
            problems.append((keys["quantity"], "expected a lowercase name of up to 32 letters, "
                             'digits and _, starting with a letter, such as "soil_moisture"'))
            continue
        if quantity in seen:
            problems.append((keys["quantity"], f"channel{seen[quantity]} already reports "
                             f"{quantity!r}; give each channel its own quantity"))
        seen.setdefault(quantity, n)
        unit_ok = isinstance(unit, str) and UNIT_PATTERN.fullmatch(unit) is not None
        if not unit_ok:
            problems.append((keys["unit"], 'expected a unit of 1 to 16 characters without '
                             'spaces, quotes, commas or "=", such as "%" or "m"'))
        if get["gain"] not in GAINS:
            problems.append((keys["gain"], "expected one of " + ", ".join(map(str, GAINS))))
        scale, message = _scale(scale_points)
        if not message and scale is not None and get["gain"] in GAINS:
            message = _out_of_reach(n, scale, get["gain"])
        if message:
            problems.append((keys["scale"], message))
        elif scale is None and unit_ok and unit != VOLTS:
            problems.append((keys["unit"], f"without {keys['scale']} AIN{n} reports volts; "
                             f'set unit = "V" or add two [volts, value] calibration points'))
        channels.append(Channel(n, quantity, unit, get["gain"], scale))
    if not channels and not problems:
        problems.append(("channel0_quantity", "no input is read; set channelN_quantity "
                         '(N = 0..3) for at least one input, e.g. channel0_quantity = "voltage"'))
    return channels, problems


def _is_default(value: object, option: Option) -> bool:
    if isinstance(option.default, tuple):  # a list option: [] in TOML, () as the default
        return isinstance(value, list | tuple) and len(value) == 0
    return bool(value == option.default)


def _scale(points: object) -> tuple[LinearScale | None, str]:
    if isinstance(points, list | tuple) and not points:
        return None, ""
    given: Any = points
    try:
        (v1, value1), (v2, value2) = ((_finite(v), _finite(x)) for v, x in given)
    except (TypeError, ValueError):
        return None, "expected [] or two [volts, value] points such as [[2.8, 0.0], [1.2, 100.0]]"
    if v1 == v2:
        return None, "the two calibration points need different voltages"
    if value1 == value2:
        return None, "the two calibration points need different values"
    return LinearScale(v1, value1, v2, value2), ""


def _out_of_reach(n: int, scale: LinearScale, gain: float) -> str:
    """Why a calibration point's voltage can never be read on AINn at this gain; "" if it can.

    A single-ended input reads 0 V to the full-scale range: the negative half of the codes is
    for differential inputs (SBAS444 9.3.3), and the chip clips at full scale.
    """
    low, high = sorted((scale.v1, scale.v2))
    if low < 0:
        return (f"{low:g} V is below 0 V, which AIN{n} cannot read (it is measured against "
                "GND); check the points")
    if high <= gain:
        return ""
    key = f"channel{n}_gain"
    where = f"{high:g} V is outside what AIN{n} can read at {key} = {gain:g} (0 to {gain:g} V)"
    fits = [g for g in GAINS if g >= high]
    if fits:
        return f"{where}; set {key} = {min(fits):g}"
    return (f"{where}, and outside every range the ADS1115 has; divide the probe's voltage "
            "down, or check the points")


def _finite(number: object) -> float:
    if isinstance(number, bool) or not isinstance(number, int | float):
        raise TypeError(number)
    if not math.isfinite(number):
        raise ValueError(number)
    return float(number)


def _valid_thresholds(lo: int, hi: int) -> bool:
    return lo == LO_THRESH_RESET and hi == HI_THRESH_RESET


def identify(bus: Bus, address: int) -> str | None:
    """"ads1115" for a chip with the ADS111x threshold registers at their power-on values.

    Lo_thresh 0x8000 and Hi_thresh 0x7FFF (set by few users) plus a disabled comparator -- the
    power-on config 0x8583 or what this driver leaves behind. The 12-bit ADS1015 has the same
    register map and defaults and is named "ads1115" too; this driver reads it correctly.
    """
    if address not in ADS1115.addresses:
        return None
    config = bus.write_read(address, bytes([REG_CONFIG]), 2)
    lo = bus.write_read(address, bytes([REG_LO_THRESH]), 2)
    hi = bus.write_read(address, bytes([REG_HI_THRESH]), 2)
    word = int.from_bytes(config, "big")
    if _valid_thresholds(int.from_bytes(lo, "big"), int.from_bytes(hi, "big")) and (
        word & _COMP_MASK == COMP_QUE_DISABLE
    ):
        return "ads1115"
    return None


class ADS1115(Driver):
    name: ClassVar[str] = "ads1115"
    addresses: ClassVar[tuple[int, ...]] = (0x48, 0x49, 0x4A, 0x4B)  # ADDR to GND/VDD/SDA/SCL
    quantities: ClassVar[dict[str, str]] = {}  # configured per channel: channelN_quantity/_unit
    options: ClassVar[dict[str, Option]] = {
        "data_rate": Option(
            int, 128, "conversions per second; lower is less noisy and slower",
            choices=tuple(DATA_RATES),
        ),
        **channel_options(),
    }

    @classmethod
    def check_options(cls, options: Mapping[str, Any]) -> list[tuple[str, str]]:
        """(key, problem) for each rule spanning several options; config validation calls it."""
        return parse_channels(options)[1]

    @classmethod
    def configured_quantities(cls, options: Mapping[str, Any]) -> dict[str, str]:
        """Quantity -> unit of a sensor with these options (``quantities`` is per channel)."""
        return {c.quantity: c.unit for c in parse_channels(options)[0]}

    def __init__(self, bus: Bus, address: int, **kwargs: Any) -> None:
        super().__init__(bus, address, **kwargs)
        channels, problems = parse_channels(self.settings)
        if problems:
            raise DriverConfigError(
                "; ".join(f"ads1115 at {self.where}: {key}: {why}" for key, why in problems)
            )
        self.channels = channels
        self._data_rate: int = self.settings["data_rate"]
        self._rate = self._data_rate  # the rate conversions run at (see oversample)
        self._conversion_time = conversion_time(self._rate)
        self._done: list[Measurement] = []  # the inputs of the sample in progress, so far
        self._started: float | None = None  # when the conversion being collected was started
        self._config_sent = 0

    def setup(self) -> None:
        lo = self._register(REG_LO_THRESH)
        hi = self._register(REG_HI_THRESH)
        if not _valid_thresholds(lo, hi):
            raise WrongChipError(
                f"ads1115 at {self.where}: threshold registers read 0x{lo:04x}/0x{hi:04x}, not "
                "the ADS1115's 0x8000/0x7FFF; is the address right (run 'envagent scan')? If "
                "another program set the comparator, power-cycle the ADS1115"
            )
        first = self.channels[0]
        idle = config_word(first.number, first.gain, self._data_rate, start=False)
        with self.bus.lock:
            self._write_config(idle)
            self._check_config(self._register(REG_CONFIG), idle)

    def oversample(self, count: int) -> bool:
        """``average = count`` as one conversion per input at ``data_rate / count``, when the
        chip has that rate: its digital filter then averages the input over the same
        ``count / data_rate`` seconds that ``count`` conversions would cover, with one wait per
        input instead of ``count`` (SBAS444 9.3.6: the data rate sets the filter's length)."""
        if count < 1 or self._data_rate % count or self._data_rate // count not in DATA_RATES:
            return False
        self._rate = self._data_rate // count
        self._conversion_time = conversion_time(self._rate)
        return True

    def trigger(self) -> float:
        """Start the first input's single-shot conversion."""
        self._done = []
        return self._start(self.channels[0])

    def collect(self) -> list[Measurement]:
        """The finished input's value; while inputs remain, start the next and say when it
        is ready (:class:`Pending`) -- one wait per input, none spent polling."""
        channel = self.channels[len(self._done)]
        self._done.append(self._measure(channel))
        if len(self._done) < len(self.channels):
            raise Pending(self._start(self.channels[len(self._done)]))
        done, self._done = self._done, []
        return done

    def _start(self, channel: Channel) -> float:
        self._config_sent = config_word(channel.number, channel.gain, self._rate)
        self._write_config(self._config_sent)
        self._started = self.clock.monotonic()
        return self._started + self._conversion_time

    def _measure(self, channel: Channel) -> Measurement:
        code = self._finish()
        volts = volts_from_code(code, channel.gain)
        quality = Quality.CLIPPED if code in (CODE_MAX, CODE_MIN) else Quality.GOOD
        if channel.scale is None:
            return Measurement(channel.quantity, volts, channel.unit, quality)
        value, extrapolated = channel.scale(volts)
        if extrapolated:
            quality |= Quality.OUT_OF_RANGE
        return Measurement(channel.quantity, value, channel.unit, quality)

    def _finish(self) -> int:
        """The signed code of the conversion ``_start`` began, within a deadline."""
        clock, started = self.clock, self._started
        if started is None:
            self._done = []
            raise SensorError(f"ads1115 at {self.where}: collect() without trigger()")
        self._started = None
        deadline = started + self._conversion_time + DEADLINE_MARGIN_S
        self.wait_until(started + self._conversion_time)
        while True:
            status = self._register(REG_CONFIG)
            if status & OS:
                break
            if clock.monotonic() >= deadline:
                self._done = []
                raise SensorTimeoutError(
                    f"ads1115 at {self.where}: conversion not finished after "
                    f"{clock.monotonic() - started:.3f} s (config 0x{status:04x}); check the "
                    "chip's power and wiring"
                )
            clock.sleep(POLL_INTERVAL_S)
        self._check_config(status, self._config_sent)
        return signed(self.bus.write_read(self.address, bytes([REG_CONVERSION]), 2))

    def _check_config(self, read_back: int, written: int) -> None:
        if read_back & ~OS != written & ~OS:
            raise SensorError(
                f"ads1115 at {self.where}: config reads 0x{read_back:04x} after writing "
                f"0x{written:04x}; the chip was reset (a brown-out?) or reads are corrupted"
            )

    def _write_config(self, config: int) -> None:
        self.bus.write(self.address, bytes([REG_CONFIG]) + config.to_bytes(2, "big"))

    def _register(self, register: int) -> int:
        return int.from_bytes(self.bus.write_read(self.address, bytes([register]), 2), "big")

    def close(self) -> None:
        """Nothing to do: after a single-shot conversion the chip is powered down."""
