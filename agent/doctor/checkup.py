"""``envagent doctor``: every check a technician needs on site, each PASS, WARN or FAIL with the
one thing to do next.

The checks, in order: the I2C device files, each sensor (answers, is the configured chip) and N
test samples of it, the clock, the data directory (writable by the service's user, and held by
no agent but the running one), free space against ``storage.max_bytes``, the outbox's integrity,
the backlog's age, maintenance mode (WARN while it is on), and -- with ``[uplink]`` -- the
token file's mode, DNS, TCP, TLS and an authenticated empty write. A check that cannot run
because an earlier one failed is SKIP (never counted as a problem).

Nothing here writes: the database is opened read-only, the write probe carries no reading, the
data directory's lock is only tried (a free one is taken and let go at once, its file left as
a stopped agent leaves it; none is created), and the sensor checks are skipped on real hardware
while ``envagent run`` holds the bus (they would switch multiplexer channels and restart
measurements under its feet).

Exit code: 0 when nothing FAILs (WARNs allowed), 1 when a check FAILs (cli.py documents it).
"""

from __future__ import annotations

import contextlib
import functools
import os
import shutil
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

from agent.config import Config
from agent.core.timebase import HOLD_UNSYNCED_S, SYNC_ADVICE, current_boot
from agent.doctor import storage as doctor_storage
from agent.doctor import uplink as doctor_uplink
from agent.doctor.report import Check, DiskUsage, Status, human_age
from agent.doctor.sensors import check_sensors
from drivers.bus import Bus
from drivers.clock import Clock

DEV = Path("/dev")
# The file the systemd unit hands the service as its credential (systemd/envagent.service,
# LoadCredential=upload-token:...). A technician's shell has no $CREDENTIALS_DIRECTORY, so the
# auth check reads the unit's source file when no uplink.token_file is set.
SYSTEMD_TOKEN_SOURCE = Path("/etc/envagent/upload-token")
SERVICE_USER = "envagent"
DEFAULT_SAMPLES = 3


@dataclass
class Doctor:
    """What the checks look at; tests replace the hardware, the clock and the filesystem."""

    config: Config
    data_dir: Path
    clock: Clock
    environ: Mapping[str, str]
    simulate: bool = False
    samples: int = DEFAULT_SAMPLES
    buses: Mapping[int, Bus] | None = None  # the simulated world; None opens /dev/i2c-N
    dev: Path = DEV
    token_source: Path = SYSTEMD_TOKEN_SOURCE
    disk_usage: Callable[[Path], DiskUsage] = field(
        default=lambda p: DiskUsage(*shutil.disk_usage(p)))
    daemon_pid: Callable[[], int | None] = field(default=lambda: running_agent())
    # Why there is no config file, only the station record (agent.store.station): the checks that
    # need
    # the sensors' and the uplink's settings are SKIPs saying so.
    without_config: str | None = None
    service_user: str = SERVICE_USER  # whose writes the data directory must take

    def run(self) -> list[Check]:
        checks: list[Check] = []
        if self.without_config is not None:
            checks.append(Check("i2c and sensors", Status.SKIP, f"not checked: "
                                f"{self.without_config}; pass --config PATH to check them"))
        else:
            with self._buses(checks) as buses:
                checks += _guarded("sensors", lambda: check_sensors(
                    self.config, buses, self.clock, self.samples,
                    busy=None if self.simulate else self.daemon_pid()))
        checks += _guarded("clock", lambda: [check_clock(self.clock)])
        checks += _guarded("data directory", lambda: [doctor_storage.check_data_dir(
            self.data_dir, None if self.simulate else self.service_user)])
        checks += _guarded("lock", lambda: [doctor_storage.check_lock(self.data_dir,
                                                                      self.daemon_pid)])
        checks += _guarded("free space", lambda: [doctor_storage.check_free_space(
            self.config, self.data_dir, self.disk_usage)])
        checks += _guarded("database", lambda: [doctor_storage.check_database(self.data_dir)])
        checks += _guarded("backlog", lambda: doctor_storage.check_backlog(
            self.config, self.data_dir, self.clock))
        checks += _guarded("maintenance", lambda: [doctor_storage.check_maintenance(
            self.data_dir, self.clock, current_boot())])
        if self.config.uplinks and self.without_config is not None:
            checks.append(Check("uplink", Status.SKIP, f"not checked: {self.without_config}; "
                                "pass --config PATH to check DNS, TCP, TLS and the token"))
        elif self.without_config is None:
            for settings in self.config.uplinks:
                checks += _guarded("uplink", functools.partial(
                    doctor_uplink.check_upstream, self.config, settings, self.environ,
                    self.token_source))
        return checks

    @contextlib.contextmanager
    def _buses(self, checks: list[Check]) -> Iterator[dict[int, Bus]]:
        """A Check per configured bus, and the buses that could be opened."""
        numbers = sorted({s.bus for s in self.config.sensors})
        if not numbers:
            checks.append(Check("i2c", Status.PASS, "no sensors configured: no bus needed"))
        if self.buses is not None:
            checks += [Check(f"i2c bus {n}", Status.PASS, "simulated bus") for n in numbers]
            yield {n: self.buses[n] for n in numbers if n in self.buses}
            return
        opened: dict[int, Bus] = {}
        try:
            for n in numbers:
                check = check_device(self.dev / f"i2c-{n}", n)
                if check.status is Status.PASS:
                    from drivers.bus import SMBus2Bus  # smbus2: real hardware only

                    try:
                        opened[n] = SMBus2Bus(n)
                    except OSError as exc:
                        check = Check(check.name, Status.FAIL, f"cannot open it: {exc}",
                                      "check `dmesg | grep i2c` for the adapter's errors")
                checks.append(check)
            yield opened
        finally:
            for bus in opened.values():
                bus.close()


def _guarded(name: str, run: Callable[[], list[Check]]) -> list[Check]:
    """A check that crashed is a FAIL of its own, never the end of the doctor."""
    try:
        return run()
    except Exception as exc:  # noqa: BLE001 - report it and go on with the other checks
        return [Check(name, Status.FAIL, f"the check itself failed: {type(exc).__name__}: "
                      f"{exc}", "please report this with the output of envagent doctor")]


def check_device(path: Path, number: int) -> Check:
    """The bus's device file exists and this user may read and write it."""
    name = f"i2c bus {number}"
    if not path.exists():
        hint = ("sudo raspi-config nonint do_i2c 0, then reboot" if number == 1 else
                f"enable the I2C adapter of bus {number} (a dtoverlay= line in "
                "/boot/firmware/config.txt), then reboot")
        return Check(name, Status.FAIL, f"{path} does not exist: I2C is not enabled", hint)
    if not os.access(path, os.R_OK | os.W_OK):
        return Check(name, Status.FAIL, f"{path} exists, but user {_user()} cannot read and "
                     "write it",
                     f"sudo usermod -aG i2c {SERVICE_USER} (and your own user, to run doctor; "
                     "log in again after)")
    return Check(name, Status.PASS, f"{path} is readable and writable by {_user()}")


def check_clock(clock: Clock) -> Check:
    """WARN while this boot's readings are held for the clock (it may still synchronise), FAIL
    once the hold is over and they go upstream flagged, with an untrusted time."""
    synced = clock.synchronized()
    if synced:
        return Check("clock", Status.PASS, "synchronised")
    if synced is None:
        return Check("clock", Status.WARN, "cannot tell whether it is synchronised (the "
                     "kernel does not say): readings are sent as they are stamped", SYNC_ADVICE)
    up = clock.boottime()
    if up < HOLD_UNSYNCED_S:
        return Check("clock", Status.WARN, f"not synchronised, {human_age(up)} after boot: this "
                     "boot's readings are held from delivery until it is (then re-stamped "
                     f"with their true time), {human_age(HOLD_UNSYNCED_S - up)} more at most; "
                     "after that they go upstream flagged clock_unsynced", SYNC_ADVICE)
    return Check("clock", Status.FAIL, f"not synchronised {human_age(up)} after boot: readings "
                 "go upstream flagged clock_unsynced, their time not trusted (the hold for it "
                 f"ends {human_age(HOLD_UNSYNCED_S)} after boot)", SYNC_ADVICE)


def running_agent(proc: Path = Path("/proc")) -> int | None:
    """The pid of an ``envagent run`` on the real bus (a simulated one touches no hardware)."""
    me = os.getpid()
    for entry in proc.glob("[0-9]*"):
        try:
            words = doctor_storage.command_words(entry / "cmdline")
        except OSError:
            continue
        if int(entry.name) == me or "run" not in words or "--simulate" in words:
            continue
        if any(Path(w).name == "envagent" for w in words[:2]) or words[1:3] == ["-m", "agent"]:
            return int(entry.name)
    return None


def _user() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.geteuid()).pw_name
    except (ImportError, KeyError):
        return str(os.geteuid())
