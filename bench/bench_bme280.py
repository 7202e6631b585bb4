"""BME280 sample cost: envagent's driver beside the Adafruit driver's default property reads.

Both run on the same simulated bus with the real clock (so their waits are real), reading the
same chip model. The Adafruit baseline is what a naive script does: ``bme.temperature``,
``bme.humidity``, ``bme.pressure`` in forced mode -- three measurements, each waited for by
polling the status register.

Run:  .venv/bin/python bench/bench_bme280.py [--samples N]
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

from adafruit_bme280.basic import Adafruit_BME280_I2C

from drivers.bme280 import BME280
from drivers.busio_adapter import BusioI2C
from drivers.clock import SystemClock
from drivers.sim.bme280 import BME280Model
from drivers.sim.simbus import SimBus

ADDRESS = 0x76


def measure(sample: Callable[[], object], bus: SimBus, samples: int) -> dict[str, float]:
    sample()  # warm-up: first-call imports and caches
    bus.clear_log()
    cpu0, wall0 = time.process_time(), time.perf_counter()
    for _ in range(samples):
        sample()
    cpu, wall = time.process_time() - cpu0, time.perf_counter() - wall0
    return {
        "cpu_us": cpu / samples * 1e6,
        "wall_ms": wall / samples * 1e3,
        "transactions": len(bus.transactions(ADDRESS)) / samples,
    }


def fresh_bus(clock: SystemClock) -> SimBus:
    bus = SimBus(1, clock=clock)
    bus.attach(ADDRESS, BME280Model(clock=clock, temperature=21.5, humidity=48.0, pressure=1003.0))
    return bus


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=200)
    args = parser.parse_args()
    clock = SystemClock()

    bus = fresh_bus(clock)
    ours = BME280(bus, ADDRESS, clock=clock)
    ours.setup()
    results = {"envagent BME280": measure(ours.read, bus, args.samples)}

    bus = fresh_bus(clock)
    naive = Adafruit_BME280_I2C(BusioI2C(bus), ADDRESS)

    def naive_sample() -> tuple[float, float, float]:
        return naive.temperature, naive.humidity, naive.pressure

    results["Adafruit defaults"] = measure(naive_sample, bus, args.samples)

    print(f"BME280, one sample = temperature + humidity + pressure; {args.samples} samples each")
    print(f"{'driver':<20} {'CPU µs/sample':>14} {'wall ms/sample':>15} {'bus txn/sample':>15}")
    for name, r in results.items():
        print(f"{name:<20} {r['cpu_us']:>14.1f} {r['wall_ms']:>15.2f} {r['transactions']:>15.1f}")
    a, b = results["envagent BME280"], results["Adafruit defaults"]
    print(
        f"ratio envagent/naive: CPU {a['cpu_us'] / b['cpu_us']:.2f}, "
        f"wall {a['wall_ms'] / b['wall_ms']:.2f}, "
        f"transactions {a['transactions'] / b['transactions']:.2f}"
    )


if __name__ == "__main__":
    main()
