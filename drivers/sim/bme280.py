"""Register-level models of the Bosch BME280 and its humidity-less sibling, the BMP280.

Section and table numbers refer to the BME280 data sheet BST-BME280-DS002 (rev. 1.6, 2018) unless
they name the BMP280 data sheet BST-BMP280-DS001. The model keeps the chip's state machine
(sleep / forced / normal, the measuring and im_update status bits, ctrl_hum latching, deferred mode
changes, IIR filter) on the bus's clock, and turns physical inputs into the raw ADC words a real
chip would report by inverting the data sheet's floating-point compensation (section 8.1), so any
correct driver reads back what a test set.

Simplifications, where the data sheet is silent or the detail does not matter to a driver:
im_update is set only during the start-up after power-on or soft reset, not before each
conversion; the register pointer is 8 bits and wraps from 0xFF to 0x00; reserved registers read
0x00; when many normal-mode cycles pass between two bus accesses, the conditions of the latest
cycle stand for all of them (in the IIR filter too); the filter starts from the first conversion
after reset.
"""

from __future__ import annotations

import struct
import threading
from collections.abc import Callable
from dataclasses import astuple, dataclass, fields, replace
from typing import ClassVar

from drivers.clock import Clock, SystemClock
from drivers.sim.environment import Conditions, Source

# --- register map (section 5.3, table 18) -------------------------------------------------------
REG_CALIB00 = 0x88  # calib00..calib25 (0x88-0xA1): dig_T*, dig_P*, dig_H1 (table 16)
REG_DIG_H1 = 0xA1
REG_ID = 0xD0
REG_RESET = 0xE0
REG_CALIB26 = 0xE1  # dig_H2..dig_H6 (0xE1-0xE7, table 16)
REG_CTRL_HUM = 0xF2
REG_STATUS = 0xF3
REG_CTRL_MEAS = 0xF4
REG_CONFIG = 0xF5
REG_PRESS_MSB = 0xF7  # press 0xF7-0xF9, temp 0xFA-0xFC, hum 0xFD-0xFE
REG_TEMP_MSB = 0xFA
REG_HUM_MSB = 0xFD
REG_HUM_LSB = 0xFE
_REGISTER_COUNT = 0x100
_RESERVED_VALUE = 0x00

BME280_CHIP_ID = 0x60  # 5.4.1
BMP280_CHIP_ID = 0x58  # BMP280 DS001 4.3.1 (mass production; samples read 0x56/0x57)
SOFT_RESET_WORD = 0xB6  # 5.4.2: any other value has no effect

STATUS_MEASURING = 1 << 3  # 5.4.4
STATUS_IM_UPDATE = 1 << 0

MODE_MASK = 0b11  # ctrl_meas bits 1:0 (5.4.5, table 25)
MODE_SLEEP = 0b00
MODE_NORMAL = 0b11  # 0b01 and 0b10 both select forced mode
_OSRS_MASK = 0b111
_OSRS_T_SHIFT = 5
_OSRS_P_SHIFT = 2
_CTRL_HUM_MASK = 0b111  # osrs_h[2:0]; bits 7:3 unused (5.4.3)
_CONFIG_T_SB_SHIFT = 5
_CONFIG_FILTER_SHIFT = 2
_CONFIG_WRITABLE = 0b1111_1101  # bit 1 is unused (5.4.6)

# osrs_* register code -> oversampling factor; 0 skips the measurement, 101 and up mean x16
# (tables 20, 23, 24).
OVERSAMPLING = (0, 1, 2, 4, 8, 16, 16, 16)
# filter[2:0] -> IIR coefficient, 1 meaning off (table 28; 3.4.4).
IIR_COEFFICIENT = (1, 2, 4, 8, 16, 16, 16, 16)
# t_sb[2:0] -> standby time in ms between normal-mode measurements (table 27); the BMP280 differs
# in the last two codes (table 17, register incompatibilities).
BME280_STANDBY_MS = (0.5, 62.5, 125.0, 250.0, 500.0, 1000.0, 10.0, 20.0)
BMP280_STANDBY_MS = (0.5, 62.5, 125.0, 250.0, 500.0, 1000.0, 2000.0, 4000.0)

# Typical measurement time (9.1): t = 1 + [2·osrs_t] + [2·osrs_p + 0.5] + [2·osrs_h + 0.5] ms,
# each bracket omitted when that measurement is skipped.
T_MEASURE_BASE_MS = 1.0
T_MEASURE_PER_SAMPLE_MS = 2.0
T_MEASURE_PH_SETUP_MS = 0.5
# Start-up time from power-on or soft reset to the first communication (table 1, t_startup).
T_STARTUP_MS = 2.0
_MS = 1e-3

# Raw data words (3.4.1-3.4.3, 5.4.7-5.4.9): pressure and temperature are 20 bit, with 16 bit of
# resolution at x1 and one more per oversampling doubling (the low bits then read 0), always 20
# bit with the IIR filter on; humidity is 16 bit. A skipped measurement reads 0x80000 / 0x8000.
ADC_BITS_TP = 20
ADC_BITS_H = 16
_BASE_RESOLUTION_BITS = 16
SKIPPED_TP = 0x80000
SKIPPED_H = 0x8000
_XLSB_SHIFT = 4  # xlsb holds bits 3:0 of the 20-bit word in its bits 7:4

PA_PER_HPA = 100.0
T_FINE_PER_DEGC = 5120.0  # 8.1: T = t_fine / 5120
_ROOT_TOLERANCE_LSB = 1e-6  # far below one LSB of the 20-bit word
_ROOT_MAX_STEPS = 100


@dataclass(frozen=True)
class Calibration:
    """Trimming parameters (4.2.2, table 16), names as in the data sheet.

    The defaults are the worked example of the BMP280 data sheet (DS001 3.12, table 15) for
    temperature and pressure and typical values read from BME280 parts for humidity.
    """

    dig_T1: int = 27504
    dig_T2: int = 26435
    dig_T3: int = -1000
    dig_P1: int = 36477
    dig_P2: int = -10685
    dig_P3: int = 3024
    dig_P4: int = 2855
    dig_P5: int = 140
    dig_P6: int = -7
    dig_P7: int = 15500
    dig_P8: int = -14600
    dig_P9: int = 6000
    dig_H1: int = 75
    dig_H2: int = 362
    dig_H3: int = 0
    dig_H4: int = 313
    dig_H5: int = 50
    dig_H6: int = 30

    # Storage types from table 16: 'H'/'B' unsigned, 'h'/'b' signed, 'x' a signed 12-bit field.
    _TYPES: ClassVar[str] = "HhhHhhhhhhhhBhBxxb"

    def __post_init__(self) -> None:
        limits = {"H": (0, 0xFFFF), "h": (-0x8000, 0x7FFF), "B": (0, 0xFF), "b": (-0x80, 0x7F)}
        limits["x"] = (-0x800, 0x7FF)
        names = [f.name for f in fields(self)]
        for name, kind, value in zip(names, self._TYPES, astuple(self), strict=True):
            low, high = limits[kind]
            if not low <= value <= high:
                raise ValueError(f"{name}={value} does not fit its register ({low}..{high})")
        if self.dig_P1 == 0:
            raise ValueError("dig_P1=0 would divide by zero in the pressure compensation")

    def calib00_25(self, *, with_humidity: bool = True) -> bytes:
        """Registers 0x88-0xA1: dig_T1..dig_P9 little-endian, 0xA0 reserved, 0xA1 dig_H1."""
        words = struct.pack("<HhhHhhhhhhhh", *astuple(self)[:12])
        return words + bytes([_RESERVED_VALUE, self.dig_H1 if with_humidity else _RESERVED_VALUE])

    def calib26_32(self) -> bytes:
        """Registers 0xE1-0xE7, including the 12-bit dig_H4/dig_H5 sharing 0xE5's nibbles."""
        e4 = (self.dig_H4 >> 4) & 0xFF  # dig_H4[11:4]
        e5 = (self.dig_H4 & 0x0F) | ((self.dig_H5 & 0x0F) << 4)  # H4[3:0] | H5[3:0] << 4
        e6 = (self.dig_H5 >> 4) & 0xFF  # dig_H5[11:4]
        return struct.pack("<hBBBBb", self.dig_H2, self.dig_H3, e4, e5, e6, self.dig_H6)


TYPICAL_CALIBRATION = Calibration()


# --- compensation (8.1, double precision) and its inverse ---------------------------------------


def compensate_temperature(adc_t: float, cal: Calibration) -> float:
    """var1 + var2 of 8.1: the fine temperature before truncation (°C · 5120)."""
    var1 = (adc_t / 16384.0 - cal.dig_T1 / 1024.0) * cal.dig_T2
    var2 = (adc_t / 131072.0 - cal.dig_T1 / 8192.0) ** 2 * cal.dig_T3
    return var1 + var2


def compensate_pressure(adc_p: float, t_fine: int, cal: Calibration) -> float:
    """Pressure in Pa (8.1)."""
    var1 = t_fine / 2.0 - 64000.0
    var2 = var1 * var1 * cal.dig_P6 / 32768.0
    var2 = var2 + var1 * cal.dig_P5 * 2.0
    var2 = var2 / 4.0 + cal.dig_P4 * 65536.0
    var1 = (cal.dig_P3 * var1 * var1 / 524288.0 + cal.dig_P2 * var1) / 524288.0
    var1 = (1.0 + var1 / 32768.0) * cal.dig_P1
    p = 1048576.0 - adc_p
    p = (p - var2 / 4096.0) * 6250.0 / var1
    var1 = cal.dig_P9 * p * p / 2147483648.0
    var2 = p * cal.dig_P8 / 32768.0
    return p + (var1 + var2 + cal.dig_P7) / 16.0


def compensate_humidity(adc_h: float, t_fine: int, cal: Calibration) -> float:
    """Relative humidity in % (8.1), before the data sheet's clamp to 0-100."""
    var_h = t_fine - 76800.0
    var_h = (adc_h - (cal.dig_H4 * 64.0 + cal.dig_H5 / 16384.0 * var_h)) * (
        cal.dig_H2
        / 65536.0
        * (1.0 + cal.dig_H6 / 67108864.0 * var_h * (1.0 + cal.dig_H3 / 67108864.0 * var_h))
    )
    return var_h * (1.0 - cal.dig_H1 * var_h / 524288.0)


def _invert(compensate: Callable[[float], float], target: float, bits: int) -> float:
    """The raw value in [0, 2**bits) that ``compensate`` maps to ``target``.

    The compensations are monotonic and nearly linear over the ADC range, so the Illinois variant
    of regula falsi converges in a handful of evaluations while keeping the root bracketed. A
    target beyond the range ends at the nearer end, as a chip's ADC clips.
    """
    a, b = 0.0, float((1 << bits) - 1)
    fa, fb = compensate(a) - target, compensate(b) - target
    if fa * fb >= 0.0:
        return a if abs(fa) <= abs(fb) else b
    x, kept = a, 0  # kept: which end survived the last step (-1 low, +1 high)
    for _ in range(_ROOT_MAX_STEPS):
        previous, x = x, (a * fb - b * fa) / (fb - fa)
        fx = compensate(x) - target
        if fx == 0.0 or abs(x - previous) < _ROOT_TOLERANCE_LSB:
            break
        if (fx > 0.0) == (fb > 0.0):
            b, fb = x, fx
            if kept < 0:
                fa /= 2.0  # Illinois: an end kept twice gets half weight, so it cannot stall
            kept = -1
        else:
            a, fa = x, fx
            if kept > 0:
                fb /= 2.0
            kept = 1
    return x


def _quantize(exact: float, bits: int, resolution_bits: int) -> int:
    """Round to the nearest word the ADC can report at ``resolution_bits`` (low bits zero)."""
    step = 1 << (bits - resolution_bits)
    word = round(exact / step) * step
    return min(max(word, 0), (1 << bits) - step)


def _resolution_bits(oversampling: int) -> int:
    return _BASE_RESOLUTION_BITS + oversampling.bit_length() - 1  # x1 -> 16 ... x16 -> 20


class BME280Model:
    """A BME280 behind one I2C address; implements :class:`drivers.sim.simbus.SimDevice`.

    Physical inputs are ``temperature`` (°C), ``humidity`` (%RH) and ``pressure`` (hPa), or a
    ``source`` that maps the wall time of each measurement to :class:`Conditions` (it wins when
    set). ``stuck_measuring`` models a hung chip: the measuring bit reads 1 and no conversion
    completes until the test clears it.
    """

    chip_id: ClassVar[int] = BME280_CHIP_ID
    has_humidity: ClassVar[bool] = True
    standby_ms: ClassVar[tuple[float, ...]] = BME280_STANDBY_MS

    def __init__(
        self,
        *,
        clock: Clock | None = None,
        calibration: Calibration = TYPICAL_CALIBRATION,
        source: Source | None = None,
        temperature: float = 20.0,
        humidity: float = 50.0,
        pressure: float = 1013.25,
    ) -> None:
        self.clock: Clock = clock if clock is not None else SystemClock()
        self.calibration = calibration
        self._conversions = 0
        self._lock = threading.RLock()
        self._source = source
        self._inputs = Conditions(temperature, humidity, pressure)
        self._stuck_measuring = False
        self._calib00 = calibration.calib00_25(with_humidity=self.has_humidity)
        self._calib26 = calibration.calib26_32() if self.has_humidity else b""
        self.power_on_reset()

    # --- inputs ---------------------------------------------------------------------------------
    # Each setter first lets the chip finish every measurement that ended before the change, so a
    # new input only shows in measurements that end after it, however lazily the bus polls.

    @property
    def temperature(self) -> float:
        """°C at the sensor when no ``source`` is set."""
        return self._inputs.temperature

    @temperature.setter
    def temperature(self, value: float) -> None:
        self._set_inputs(temperature=value)

    @property
    def humidity(self) -> float:
        """%RH at the sensor when no ``source`` is set."""
        return self._inputs.humidity

    @humidity.setter
    def humidity(self, value: float) -> None:
        self._set_inputs(humidity=value)

    @property
    def pressure(self) -> float:
        """hPa at the sensor when no ``source`` is set."""
        return self._inputs.pressure

    @pressure.setter
    def pressure(self, value: float) -> None:
        self._set_inputs(pressure=value)

    @property
    def source(self) -> Source | None:
        """Wall time -> :class:`Conditions`; overrides the fixed inputs while set."""
        return self._source

    @source.setter
    def source(self, value: Source | None) -> None:
        with self._lock:
            self._advance(self.clock.monotonic())
            self._source = value

    @property
    def stuck_measuring(self) -> bool:
        """Fault: the measuring bit reads 1 and no conversion completes while True."""
        return self._stuck_measuring

    @stuck_measuring.setter
    def stuck_measuring(self, value: bool) -> None:
        with self._lock:
            self._advance(self.clock.monotonic())
            self._stuck_measuring = value

    @property
    def conversions(self) -> int:
        """Measurements completed by now (normal mode keeps counting between bus accesses)."""
        with self._lock:
            self._advance(self.clock.monotonic())
            return self._conversions

    def _set_inputs(self, **changes: float) -> None:
        with self._lock:
            self._advance(self.clock.monotonic())
            self._inputs = replace(self._inputs, **changes)

    # --- SimDevice ------------------------------------------------------------------------------

    def write(self, data: bytes) -> None:
        """(register, value) pairs (6.2.1); a single byte only sets the register pointer."""
        if not data:
            return
        with self._lock:
            now = self.clock.monotonic()
            self._advance(now)
            for index in range(0, len(data) - 1, 2):
                register, value = data[index], data[index + 1]
                self._write_register(register, value, now)
                self._pointer = register  # no auto-increment on writes
            if len(data) % 2:
                self._pointer = data[-1]  # a lone (or trailing) register address

    def read(self, length: int) -> bytes:
        """Burst read from the pointer, auto-incrementing (6.2.2); one instant, one data set."""
        with self._lock:
            now = self.clock.monotonic()
            self._advance(now)
            answer = bytes(
                self._register((self._pointer + i) % _REGISTER_COUNT, now) for i in range(length)
            )
            self._pointer = (self._pointer + length) % _REGISTER_COUNT
            return answer

    # --- chip state -----------------------------------------------------------------------------

    def power_on_reset(self) -> None:
        """The complete power-on-reset procedure, as after power-up or a 0xB6 soft reset."""
        with self._lock:
            now = self.clock.monotonic()
            self._pointer = 0
            self._ctrl_hum = 0
            self._osrs_h = 0  # the humidity setting in effect (5.4.3)
            self._ctrl_meas = 0
            self._config = 0
            self._measure_start: float | None = None
            self._pending_ctrl_meas: int | None = None
            self._iir: dict[str, float] = {}
            self._data = self._pack(SKIPPED_TP, SKIPPED_TP, SKIPPED_H)
            self._startup_until = now + T_STARTUP_MS * _MS

    def measurement_time(self) -> float:
        """Seconds one measurement takes at the current settings (9.1, typical)."""
        seconds = T_MEASURE_BASE_MS * _MS
        for osrs, setup_ms in (
            (self._osrs_t, 0.0),
            (self._osrs_p, T_MEASURE_PH_SETUP_MS),
            (self._osrs_h_active, T_MEASURE_PH_SETUP_MS),
        ):
            if osrs:
                seconds += (T_MEASURE_PER_SAMPLE_MS * osrs + setup_ms) * _MS
        return seconds

    @property
    def _osrs_t(self) -> int:
        return OVERSAMPLING[(self._ctrl_meas >> _OSRS_T_SHIFT) & _OSRS_MASK]

    @property
    def _osrs_p(self) -> int:
        return OVERSAMPLING[(self._ctrl_meas >> _OSRS_P_SHIFT) & _OSRS_MASK]

    @property
    def _osrs_h_active(self) -> int:
        return OVERSAMPLING[self._osrs_h] if self.has_humidity else 0

    @property
    def _mode(self) -> int:
        return self._ctrl_meas & MODE_MASK

    def _standby_time(self) -> float:
        return self.standby_ms[(self._config >> _CONFIG_T_SB_SHIFT) & _OSRS_MASK] * _MS

    def _converting(self, now: float) -> bool:
        return self._measure_start is not None and self._measure_start <= now

    def _register(self, register: int, now: float) -> int:
        if REG_CALIB00 <= register <= REG_DIG_H1:
            return self._calib00[register - REG_CALIB00]
        if register == REG_ID:
            return self.chip_id
        if self.has_humidity and REG_CALIB26 <= register < REG_CALIB26 + len(self._calib26):
            return self._calib26[register - REG_CALIB26]
        if register == REG_CTRL_HUM and self.has_humidity:
            return self._ctrl_hum
        if register == REG_STATUS:
            measuring = self._stuck_measuring or self._converting(now)
            updating = now < self._startup_until
            return (STATUS_MEASURING if measuring else 0) | (STATUS_IM_UPDATE if updating else 0)
        if register == REG_CTRL_MEAS:
            return self._ctrl_meas
        if register == REG_CONFIG:
            return self._config
        if REG_PRESS_MSB <= register < REG_PRESS_MSB + len(self._data):
            return self._data[register - REG_PRESS_MSB]
        return _RESERVED_VALUE  # reserved registers, and reset (5.4.2: reads 0x00)

    def _write_register(self, register: int, value: int, now: float) -> None:
        """Writable: reset, ctrl_hum, ctrl_meas, config; everything else is read-only."""
        if register == REG_RESET:
            if value == SOFT_RESET_WORD:
                self.power_on_reset()
        elif register == REG_CTRL_HUM and self.has_humidity:
            if self._pending_ctrl_meas is None:  # 3.3.1: ignored while a mode change waits
                self._ctrl_hum = value & _CTRL_HUM_MASK
        elif register == REG_CTRL_MEAS:
            if not self._converting(now):
                self._apply_ctrl_meas(value, now)
            elif self._pending_ctrl_meas is None:
                # 3.3.1: a mode change during a measurement waits for its end; further ones
                # are ignored until then.
                self._pending_ctrl_meas = value
        elif register == REG_CONFIG and self._mode != MODE_NORMAL:
            self._config = value & _CONFIG_WRITABLE  # 5.4.6: ignored in normal mode

    def _apply_ctrl_meas(self, value: int, now: float) -> None:
        previous_mode = self._mode
        self._ctrl_meas = value
        self._osrs_h = self._ctrl_hum  # 5.4.3: ctrl_hum takes effect with a ctrl_meas write
        mode = self._mode
        if mode == MODE_SLEEP:
            self._measure_start = None
        elif mode != MODE_NORMAL or previous_mode != MODE_NORMAL or self._measure_start is None:
            self._measure_start = now  # forced, or entering normal mode: measure right away

    def _advance(self, now: float) -> None:
        """Complete every measurement that has ended by ``now`` (the chip ran meanwhile)."""
        while self._measure_start is not None and not self._stuck_measuring:
            start = self._measure_start
            duration = self.measurement_time()
            end = start + duration
            if now < end:
                return
            if self._mode == MODE_NORMAL and self._pending_ctrl_meas is None:
                period = duration + self._standby_time()
                cycles = int((now - end) // period) + 1
                last_start = start + (cycles - 1) * period
                self._convert(last_start, cycles, now)
                self._measure_start = last_start + period
                continue
            self._convert(start, 1, now)
            self._measure_start = None
            if self._mode != MODE_NORMAL:
                self._ctrl_meas &= ~MODE_MASK  # 3.3.3: forced mode returns to sleep
            if self._pending_ctrl_meas is not None:
                value, self._pending_ctrl_meas = self._pending_ctrl_meas, None
                self._apply_ctrl_meas(value, end)

    # --- one conversion -------------------------------------------------------------------------

    def _conditions(self, start: float, now: float) -> Conditions:
        if self._source is None:
            return self._inputs
        return self._source(self.clock.time() - (now - start))

    def _convert(self, start: float, cycles: int, now: float) -> None:
        """Latch the data registers with the measurement that started at ``start``.

        ``cycles`` > 1 when several normal-mode measurements passed unobserved; only the IIR
        filter can tell, so they are folded into it.
        """
        cal = self.calibration
        conditions = self._conditions(start, now)
        coefficient = IIR_COEFFICIENT[(self._config >> _CONFIG_FILTER_SHIFT) & _OSRS_MASK]

        exact_t = _invert(
            lambda raw: compensate_temperature(raw, cal),
            conditions.temperature * T_FINE_PER_DEGC,
            ADC_BITS_TP,
        )
        adc_t = SKIPPED_TP
        t_fine = int(compensate_temperature(exact_t, cal))
        if self._osrs_t:
            adc_t = self._filter("t", exact_t, self._osrs_t, coefficient, cycles)
            t_fine = int(compensate_temperature(adc_t, cal))  # what the driver will compute

        adc_p = SKIPPED_TP
        if self._osrs_p:
            exact_p = _invert(
                lambda raw: compensate_pressure(raw, t_fine, cal),
                conditions.pressure * PA_PER_HPA,
                ADC_BITS_TP,
            )
            adc_p = self._filter("p", exact_p, self._osrs_p, coefficient, cycles)

        adc_h = SKIPPED_H
        if self._osrs_h_active:  # 3.4.3: humidity has a fixed 16-bit resolution and no filter
            exact_h = _invert(
                lambda raw: compensate_humidity(raw, t_fine, cal), conditions.humidity, ADC_BITS_H
            )
            adc_h = _quantize(exact_h, ADC_BITS_H, ADC_BITS_H)

        self._data = self._pack(adc_p, adc_t, adc_h)
        self._conversions += cycles

    def _filter(self, name: str, exact: float, osrs: int, coefficient: int, cycles: int) -> int:
        """3.4.4: filtered = (previous · (c − 1) + new) / c, applied ``cycles`` times."""
        previous = self._iir.get(name)
        if coefficient == 1 or previous is None:
            self._iir[name] = exact
        else:
            keep = ((coefficient - 1) / coefficient) ** cycles
            self._iir[name] = exact + (previous - exact) * keep
        bits = ADC_BITS_TP if coefficient > 1 else _resolution_bits(osrs)  # table 17
        return _quantize(self._iir[name], ADC_BITS_TP, bits)

    def _pack(self, adc_p: int, adc_t: int, adc_h: int) -> bytes:
        """The data registers from 0xF7: msb, lsb, xlsb[7:4] for P and T, msb, lsb for H."""
        data = (adc_p << _XLSB_SHIFT).to_bytes(3, "big") + (adc_t << _XLSB_SHIFT).to_bytes(3, "big")
        return data + adc_h.to_bytes(2, "big") if self.has_humidity else data


class BMP280Model(BME280Model):
    """A BMP280: the BME280 register map without humidity (BME280 DS 5.2, table 17)."""

    chip_id: ClassVar[int] = BMP280_CHIP_ID
    has_humidity: ClassVar[bool] = False
    standby_ms: ClassVar[tuple[float, ...]] = BMP280_STANDBY_MS
