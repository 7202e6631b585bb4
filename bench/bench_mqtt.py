"""Backlog drain over MQTT: a million-reading outbox published to a local Mosquitto by the real
Uplink and MQTT sink, against one publish per reading, in the same run.

The backlog is bench_drain.py's (``--sensors`` BME280s every 10 s, appended in commit-sized
batches under /var/tmp). ``agent.uplink.worker.Uplink.flush`` drains it through
``agent.uplink.mqtt.transport.MqttSink``: take -> JSON batches (``envagent-batch/1``, or
``--payload lineprotocol``) split to ``max_message_bytes`` -> QoS 1 publishes, a window of
``max_inflight`` unacknowledged -> each reading acked once its message's PUBACK came back.
Mosquitto (Debian's package) runs on 127.0.0.1 through the test harness (tests/mosquitto.py:
password file, persistence, an unbounded queue per subscriber).

The naive client beside it: one paho-mqtt client, connected once, publishing each reading as a
QoS 1 message of its own (its JSON item) and waiting for that message's PUBACK before the next --
what "at least once, one reading at a time" looks like. It runs on a smaller sample
(``--naive-readings``), read from memory, not from a database (which flatters it); its figures
are per reading.

Figures: readings/s is wall time of the drain; client CPU is ``time.process_time`` of this
process (every thread: the worker and paho's network thread) over it; broker CPU is
mosquitto's utime+stime from /proc. The readings are counted by a subscriber in a separate
process (so its JSON parsing costs this process nothing), which keeps every reading id it
receives: **no figures unless it received every reading** of both clients.

Run:  .venv/bin/python bench/bench_mqtt.py [--readings N] [--payload json|lineprotocol]
      [--naive-readings N] [--max-message-bytes N] [--max-inflight N]
"""

from __future__ import annotations

import argparse
import json
import math
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _vm import SCRATCH
from bench_drain import INTERVAL_NS, MAX_BYTES, SENSOR_NAMES, SITE, UNIT, build_backlog, cpu_of
from bench_drain import readings as station_readings

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import mosquitto as harness  # noqa: E402  (tests/ is not a package)

from agent.config import UplinkConfig  # noqa: E402
from agent.config.mqtt import MqttConfig  # noqa: E402
from agent.core.credentials import Secret  # noqa: E402
from agent.core.reading import Reading  # noqa: E402
from agent.store.outbox import Outbox, Subscriber  # noqa: E402
from agent.uplink.encoders import JsonEncoder, reading_id  # noqa: E402
from agent.uplink.mqtt.payload import MessageEncoder  # noqa: E402
from agent.uplink.mqtt.topics import Topics  # noqa: E402
from agent.uplink.mqtt.transport import MqttSink  # noqa: E402
from agent.uplink.worker import Uplink  # noqa: E402
from drivers.clock import SystemClock  # noqa: E402

WAIT_S = 300.0  # for the subscriber to have every reading the broker acknowledged


def subscriber(port: int) -> None:
    """The counting subscriber (``--subscriber PORT``): every reading id of ``envagent/#`` (JSON
    batches, or one line per sample of line protocol: each line's readings counted by its
    fields) and of ``naive/#``; answers each line on stdin with the two counts."""
    import re
    import threading

    from paho.mqtt.client import CallbackAPIVersion, Client, MQTTv5

    ours: set[str] = set()
    lines: set[bytes] = set()
    naive: set[str] = set()
    lock = threading.Lock()

    def on_message(client: Client, userdata: object, message: object) -> None:
        topic, payload = message.topic, message.payload  # type: ignore[attr-defined]
        with lock:
            if topic.startswith("naive/"):
                naive.add(json.loads(payload)["id"])
            elif payload.startswith(b"{"):
                ours.update(item["id"] for item in json.loads(payload)["readings"])
            else:  # line protocol: a line is one sample; its readings are its value fields
                lines.update(payload.splitlines())

    def on_connect(client: Client, *args: object) -> None:
        client.subscribe([("envagent/#", 1), ("naive/#", 1)])

    client = Client(CallbackAPIVersion.VERSION2, client_id="bench-counter", protocol=MQTTv5)
    client.username_pw_set(harness.SUBSCRIBER, harness.SUBSCRIBER_PASSWORD)
    client.on_message, client.on_connect = on_message, on_connect
    client.connect("127.0.0.1", port, keepalive=60)
    client.loop_start()
    unescaped_space = re.compile(rb"(?<!\\) ")
    for _ in sys.stdin:
        with lock:
            fields = [unescaped_space.split(line)[1] for line in lines]
            counted = len(ours) + sum(f.count(b",") + 1 - f.count(b"_q=") for f in fields)
            print(counted, len(naive), flush=True)
    client.disconnect()
    client.loop_stop()


class Counter:
    def __init__(self, port: int) -> None:
        self.process = subprocess.Popen([sys.executable, __file__, "--subscriber", str(port)],
                                        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        time.sleep(1.0)  # connected and subscribed

    def counts(self) -> tuple[int, int]:
        assert self.process.stdin is not None and self.process.stdout is not None
        self.process.stdin.write("?\n")
        self.process.stdin.flush()
        ours, naive = self.process.stdout.readline().split()
        return int(ours), int(naive)

    def wait_for(self, ours: int, naive: int) -> tuple[int, int]:
        deadline = time.monotonic() + WAIT_S
        got = self.counts()
        while got < (ours, naive) and time.monotonic() < deadline:
            time.sleep(0.5)
            got = self.counts()
        return got

    def close(self) -> None:
        assert self.process.stdin is not None
        self.process.stdin.close()
        self.process.wait(30)


def drain(outbox: Outbox, broker: harness.Mosquitto, args: argparse.Namespace,
          backlog: int) -> tuple[float, float, float, int]:
    """The real Uplink through the MQTT sink: wall s, client CPU s, broker CPU s, messages."""
    mqtt = MqttConfig(payload=args.payload, max_message_bytes=args.max_message_bytes,
                      max_inflight=args.max_inflight)
    settings = UplinkConfig(url=broker.url, name="default", allow_insecure=True, mqtt=mqtt,
                            format=args.payload, batch_size=args.batch_size)
    drivers = {s: "bme280" for s in SENSOR_NAMES[:args.sensors]}
    encoder = MessageEncoder(args.payload, Topics(mqtt.topic, site=SITE, unit=UNIT), unit=UNIT,
                             site=SITE, drivers=drivers, max_bytes=mqtt.max_message_bytes)
    sink = MqttSink("127.0.0.1", broker.port, mqtt, encoder, tls=False,
                    client_id="envagent-bench", status=None)
    token = Secret(f"{harness.USER}:{harness.PASSWORD}")
    uplink = Uplink(outbox, sink, settings, clock=SystemClock(), token=lambda: token)
    published = 0
    original = sink._publish

    def counting(conn, count, messages, token):  # type: ignore[no-untyped-def]
        nonlocal published
        published += len(messages)
        return original(conn, count, messages, token)

    sink._publish = counting  # type: ignore[method-assign]
    pid = broker.process.pid if broker.process else 0
    server0, cpu0, wall0 = cpu_of(pid), time.process_time(), time.perf_counter()
    report = uplink.flush()
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    server = cpu_of(pid) - server0
    sink.close()
    if not report.ok or report.delivered != backlog:
        raise SystemExit(f"the drain failed: {report}")
    return wall, cpu, server, published


def naive(broker: harness.Mosquitto, sample: list[Reading]) -> tuple[float, float, float]:
    """One QoS 1 publish per reading, each PUBACK awaited: wall s, client CPU s, broker CPU s."""
    from paho.mqtt.client import CallbackAPIVersion, Client, MQTTv5

    encoder = JsonEncoder(unit=UNIT, site=SITE, drivers={r.sensor: "bme280" for r in sample})
    client = Client(CallbackAPIVersion.VERSION2, client_id="naive", protocol=MQTTv5)
    client.username_pw_set(harness.USER, harness.PASSWORD)
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    pid = broker.process.pid if broker.process else 0
    server0, cpu0, wall0 = cpu_of(pid), time.process_time(), time.perf_counter()
    for reading in sample:
        (item,) = encoder.document([reading])["readings"]
        payload = json.dumps(item, ensure_ascii=False, separators=(",", ":"))
        info = client.publish(f"naive/{UNIT}/{reading.sensor}", payload, qos=1)
        info.wait_for_publish(10)
        if not info.is_published():
            raise SystemExit("a naive publish got no PUBACK within 10 s")
    wall, cpu = time.perf_counter() - wall0, time.process_time() - cpu0
    server = cpu_of(pid) - server0
    client.disconnect()
    client.loop_stop()
    return wall, cpu, server


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--readings", type=int, default=1_000_000, help="backlog size")
    parser.add_argument("--sensors", type=int, default=4, choices=range(1, 9), metavar="1..8")
    parser.add_argument("--batch-size", type=int, default=UplinkConfig(url="x").batch_size)
    parser.add_argument("--payload", choices=("json", "lineprotocol"), default="json")
    parser.add_argument("--max-message-bytes", type=int, default=MqttConfig().max_message_bytes)
    parser.add_argument("--max-inflight", type=int, default=MqttConfig().max_inflight)
    parser.add_argument("--naive-readings", type=int, default=20_000)
    parser.add_argument("--subscriber", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.subscriber:
        subscriber(args.subscriber)
        return
    binary = harness.find_binary()
    if binary is None:
        raise SystemExit(harness.MISSING)
    samples = math.ceil(args.readings / (args.sensors * 3))
    start_ns = (time.time_ns() // INTERVAL_NS - samples - 360) * INTERVAL_NS
    with tempfile.TemporaryDirectory(prefix="envagent-bench-mqtt-", dir=SCRATCH) as tmp:
        broker = harness.start(binary, Path(tmp) / "broker")
        counter = Counter(broker.port)
        try:
            outbox = Outbox(Path(tmp) / "outbox.sqlite", max_bytes=MAX_BYTES,
                            subscribers=[Subscriber("default")])
            build_backlog(outbox, args.readings, args.sensors, args.sensors * 3, start_ns)
            backlog = outbox.stats().backlog
            print(f"backlog: {backlog:,} readings ({args.sensors} BME280 x 3 quantities, 10 s "
                  f"apart); payload {args.payload}, max_message_bytes {args.max_message_bytes},"
                  f" max_inflight {args.max_inflight}, batch_size {args.batch_size}")
            wall, cpu, server, messages = drain(outbox, broker, args, backlog)
            left = outbox.stats().backlog
            outbox.close()
            sample = list(station_readings(args.naive_readings, args.sensors, start_ns,
                                           random.Random(2)))
            n_wall, n_cpu, n_server = naive(broker, sample)
            got, got_naive = counter.wait_for(backlog, len(sample))
            expected_ids = len({reading_id(UNIT, r) for r in sample})
        finally:
            counter.close()
            broker.stop()
    if (got, got_naive) != (backlog, expected_ids) or left:
        raise SystemExit(f"the subscriber did not receive every reading (envagent: {got:,} of "
                         f"{backlog:,}; naive: {got_naive:,} of {expected_ids:,}; left in the "
                         f"outbox: {left}): no figures")
    rate, n_rate = backlog / wall, len(sample) / n_wall
    cpu_us, n_cpu_us = cpu / backlog * 1e6, n_cpu / len(sample) * 1e6
    srv_us, n_srv_us = server / backlog * 1e6, n_server / len(sample) * 1e6
    print(f"\n{'client':<28} {'readings/s':>11} {'1M in s':>8} {'CPU µs/rdg':>11} "
          f"{'messages':>9} {'broker CPU µs/rdg':>18}")
    print(f"{'envagent Uplink (MQTT)':<28} {rate:>11,.0f} {1e6 / rate:>8.1f} {cpu_us:>11.2f} "
          f"{messages:>9,} {srv_us:>18.2f}")
    print(f"{'naive publish per reading':<28} {n_rate:>11,.0f} {1e6 / n_rate:>8.1f} "
          f"{n_cpu_us:>11.2f} {len(sample):>9,} {n_srv_us:>18.2f}")
    print(f"ratio envagent/naive: readings/s {rate / n_rate:.0f}x, client CPU per reading "
          f"{cpu_us / n_cpu_us:.4f}, broker CPU per reading {srv_us / n_srv_us:.4f}")
    print(f"the subscriber received {got:,} envagent readings (expected {backlog:,}) and "
          f"{got_naive:,} naive ones (expected {expected_ids:,}); outbox backlog left: {left}")


if __name__ == "__main__":
    main()
