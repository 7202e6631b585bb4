"""The systemd unit and its install script, checked with systemd's own tools.

``systemd-analyze`` works offline (systemd need not be PID 1). In CI (``CI=true``) a missing
``systemd-analyze`` fails these tests; on a laptop without systemd they skip with the reason.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNIT = ROOT / "systemd" / "envagent.service"
INSTALL = ROOT / "systemd" / "install.sh"
EXAMPLE_CONFIG = ROOT / "config" / "envagent.example.toml"
EXEC_START = "/opt/envagent/venv/bin/envagent run --config /etc/envagent/envagent.toml"
# `systemd-analyze security --threshold=` counts in tenths of the printed exposure level
# (default 100 = 10.0): 15 means "at most 1.5". test_threshold_is_in_tenths pins that down.
THRESHOLD = 15
EXPOSURE_RE = re.compile(r"Overall exposure level for \S+: (\d+\.\d)")


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        if os.environ.get("CI") == "true":
            pytest.fail("systemd-analyze is missing in CI: apt install systemd")
        pytest.skip("systemd-analyze not installed; these tests need systemd's offline analyzer")
    return path


def run(*args: str | Path, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [str(a) for a in args], capture_output=True, text=True, timeout=timeout, check=False
    )


def directives(path: Path = UNIT) -> dict[str, dict[str, list[str]]]:
    """section -> key -> values, in order; a unit file may repeat a key (DeviceAllow=, ...)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("[") and line.endswith("]"):
            current = sections.setdefault(line[1:-1], {})
            continue
        key, _, value = line.partition("=")
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def exposure(output: str) -> float:
    match = EXPOSURE_RE.search(output)
    assert match, f"no exposure level in systemd-analyze output:\n{output}"
    return float(match.group(1))


# --- systemd-analyze security ---------------------------------------------------------------------


def test_security_exposure_is_at_most_1_5(systemd_analyze: str) -> None:
    result = run(systemd_analyze, "security", "--offline=yes", f"--threshold={THRESHOLD}", UNIT)

    assert result.returncode == 0, result.stdout + result.stderr
    assert exposure(result.stdout) <= THRESHOLD / 10


def test_threshold_is_in_tenths(systemd_analyze: str) -> None:
    """A threshold one tenth below the score fails: the number really is tenths of the level."""
    level = exposure(run(systemd_analyze, "security", "--offline=yes", UNIT).stdout)
    just_below = round(level * 10) - 1

    result = run(
        systemd_analyze, "security", "--offline=yes", f"--threshold={just_below}", UNIT
    )

    assert result.returncode != 0, f"exposure {level} passed --threshold={just_below}"


# --- systemd-analyze verify -----------------------------------------------------------------------


@pytest.fixture
def unit_with_stub_binary(tmp_path: Path) -> Path:
    """The unit with only ExecStart's binary replaced by an executable stub.

    ``verify`` checks that the ExecStart binary exists and is executable — nothing else about
    the target system (it does not look up User=/Group= or the groups). On a machine without
    /opt/envagent the stub stands in; every other line of the unit is verified as shipped.
    """
    stub = tmp_path / "envagent"
    stub.write_text("#!/bin/sh\nexit 0\n")
    stub.chmod(0o755)
    text = UNIT.read_text()
    assert text.count(f"ExecStart={EXEC_START}\n") == 1
    copy = tmp_path / "envagent.service"  # verify derives the unit name from the file name
    copy.write_text(text.replace("ExecStart=/opt/envagent/venv/bin/envagent", f"ExecStart={stub}"))
    return copy


def test_verify_is_clean(systemd_analyze: str, unit_with_stub_binary: Path) -> None:
    result = run(systemd_analyze, "verify", unit_with_stub_binary)

    # verify exits 0 even for unknown keys or unparsable values, which it only prints: so
    # "clean" means no output at all.
    assert result.returncode == 0, result.stderr
    assert result.stderr == ""
    assert result.stdout == ""


def test_verify_of_the_shipped_unit_only_misses_the_binary(systemd_analyze: str) -> None:
    if Path(EXEC_START.split()[0]).exists():
        pytest.skip("envagent is installed here, so there is nothing missing to report")

    result = run(systemd_analyze, "verify", UNIT)

    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines, "verify should complain about the missing /opt/envagent binary"
    assert all("/opt/envagent/venv/bin/envagent" in line for line in lines), result.stderr


def test_verify_does_report_mistakes(systemd_analyze: str, unit_with_stub_binary: Path) -> None:
    """The clean verdict above means something: a typo in a directive does show up."""
    text = unit_with_stub_binary.read_text().replace("Restart=always", "Restart=allways")
    unit_with_stub_binary.write_text(text)

    result = run(systemd_analyze, "verify", unit_with_stub_binary)

    assert "allways" in result.stderr


# --- what the unit promises -----------------------------------------------------------------------


def test_lifecycle_directives() -> None:
    unit, service = directives()["Unit"], directives()["Service"]

    assert unit["StartLimitIntervalSec"] == ["0"]  # never give up restarting
    assert service["Type"] == ["notify"]
    assert service["NotifyAccess"] == ["main"]
    assert service["WatchdogSec"] == ["30s"]
    assert service["Restart"] == ["always"]
    assert service["RestartSec"] == ["5s"]
    assert service["TimeoutStopSec"] == ["20s"]
    assert service["ExecStart"] == [EXEC_START]
    assert directives()["Install"]["WantedBy"] == ["multi-user.target"]


def test_identity_files_and_credential() -> None:
    service = directives()["Service"]

    assert service["User"] == ["envagent"]
    assert service["Group"] == ["envagent"]
    assert service["SupplementaryGroups"] == ["i2c gpio"]
    assert service["StateDirectory"] == ["envagent"]
    assert service["ConfigurationDirectory"] == ["envagent"]
    assert service["LoadCredential"] == ["upload-token:/etc/envagent/upload-token"]
    assert service["ProtectSystem"] == ["strict"]
    assert service["CapabilityBoundingSet"] == [""]


def test_device_access_is_i2c_and_gpio_only() -> None:
    service = directives()["Service"]
    bound = " ".join(service["BindPaths"]).split()

    assert service["DevicePolicy"] == ["closed"]
    assert sorted(service["DeviceAllow"]) == ["char-gpiochip rw", "char-i2c rw"]
    assert service["PrivateDevices"] == ["yes"]
    assert "-/dev/i2c-1" in bound and "-/dev/gpiochip0" in bound
    # "-": a bus or chip this board does not have must not stop the service from starting.
    assert all(re.fullmatch(r"-/dev/(i2c-\d+|gpiochip\d+)", path) for path in bound), bound


def test_what_the_agent_needs_is_not_hardened_away() -> None:
    service = directives()["Service"]
    allowed = " ".join(service["SystemCallFilter"]).split()

    # adjtimex(2) read-only tells whether the clock is synchronised; glibc issues it as
    # clock_adjtime (clock_adjtime64 on 32-bit ARM), and ProtectClock=yes would deny all three.
    assert {"adjtimex", "clock_adjtime", "clock_adjtime64"} <= set(allowed)
    assert service.get("ProtectClock", ["no"]) == ["no"]
    # ProcSubset=pid would hide /proc/sys/kernel/random/boot_id, stamped on every reading.
    assert "ProcSubset" not in service
    # Outbound HTTPS to an address not known in advance.
    assert "PrivateNetwork" not in service and "IPAddressDeny" not in service
    families = service["RestrictAddressFamilies"][0].split()
    assert {"AF_INET", "AF_INET6", "AF_UNIX"} <= set(families)


def test_device_groups_match_proc_devices() -> None:
    """On a Pi, the DeviceAllow= group names must be the ones the kernel lists."""
    devices = Path("/proc/devices").read_text() if Path("/proc/devices").exists() else ""
    if not Path("/dev/i2c-1").is_char_device() or " i2c\n" not in devices:
        pytest.skip("no I2C character devices on this machine (runs on a Raspberry Pi)")

    assert " i2c\n" in devices
    if any(Path("/dev").glob("gpiochip*")):
        assert " gpiochip\n" in devices


# --- install.sh -----------------------------------------------------------------------------------


def test_install_script_is_valid_bash() -> None:
    result = run("bash", "-n", INSTALL)

    assert result.returncode == 0, result.stderr


def test_install_script_passes_shellcheck() -> None:
    shellcheck = shutil.which("shellcheck")
    if shellcheck is None:
        pytest.skip("shellcheck not installed")

    result = run(shellcheck, INSTALL)

    assert result.returncode == 0, result.stdout


@pytest.mark.parametrize(
    ("args", "message"),
    [(["--purge"], "--purge only goes with --uninstall"), (["--bogus"], "unknown argument")],
)
def test_install_script_refuses_bad_arguments(args: list[str], message: str) -> None:
    result = run("bash", INSTALL, *args)

    assert result.returncode == 1
    assert message in result.stderr


def test_install_script_requires_root(tmp_path: Path) -> None:
    setpriv = shutil.which("setpriv")
    if os.geteuid() != 0 or setpriv is None:
        pytest.skip("needs root (and setpriv) to run the script as an unprivileged user")

    # The unprivileged user must be able to read the script wherever the checkout lives (a
    # clone inside a 0700 directory would make bash fail with 126 before the script runs).
    readable = Path(tempfile.mkdtemp(prefix="envagent-install-"))
    try:
        readable.chmod(0o755)
        script = readable / "install.sh"
        shutil.copy(INSTALL, script)
        script.chmod(0o755)
        result = run(
            setpriv, "--reuid=65534", "--regid=65534", "--clear-groups",
            "bash", script, "--root", tmp_path,
        )
    finally:
        shutil.rmtree(readable)

    assert result.returncode == 1
    assert "run as root" in result.stderr
    assert list(tmp_path.iterdir()) == []


@pytest.fixture
def target_root(tmp_path: Path) -> Iterator[Path]:
    if os.geteuid() != 0:
        pytest.skip("install.sh refuses to run without root; run the suite as root to test it")
    if not os.access("/usr/bin/python3", os.X_OK):
        pytest.skip("install.sh builds the venv with the system /usr/bin/python3, missing here")
    root = tmp_path / "root"
    (root / "boot" / "firmware").mkdir(parents=True)
    (root / "boot" / "firmware" / "config.txt").write_text("dtparam=audio=on\n")
    yield root


@pytest.mark.slow
def test_install_upgrade_uninstall_purge(target_root: Path) -> None:
    """The full life of an installation under --root, with the real venv and pip (needs PyPI)."""
    root = target_root
    unit = root / "etc/systemd/system/envagent.service"
    config = root / "etc/envagent/envagent.toml"
    token = root / "etc/envagent/upload-token"
    venv = root / "opt/envagent/venv"
    cli_link = root / "usr/local/bin/envagent"

    started = time.monotonic()
    first = run(INSTALL, "--root", root, timeout=300)
    assert first.returncode == 0, first.stdout + first.stderr
    assert unit.read_text() == UNIT.read_text()
    assert config.read_text() == EXAMPLE_CONFIG.read_text()
    assert token.read_bytes() == b"" and token.stat().st_mode & 0o777 == 0o600
    version = run(venv / "bin/envagent", "--version")
    assert version.returncode == 0 and version.stdout.startswith("envagent "), version.stderr
    # The link is for the target system, so it names the path there, not under --root.
    assert os.readlink(cli_link) == "/opt/envagent/venv/bin/envagent"
    # I2C is off in this config.txt and there is no /dev/i2c-1: a warning with the fix.
    assert "raspi-config nonint do_i2c 0" in first.stderr
    # --root never touches the running system.
    assert "not creating user" in first.stdout
    assert "not enabling or starting" in first.stdout
    # No GPIO chip in this root: nothing to say about lgpio.
    assert "lgpio" not in first.stdout + first.stderr

    # A technician edits the config, then the script runs again (an upgrade), now on a target
    # with a GPIO chip. This venv is not armv7l/aarch64 with CPython <= 3.12, so pyproject.toml
    # left lgpio out: a warning with the fix.
    config.write_text(config.read_text() + "\n# edited on site\n")
    edited = config.read_text()
    (root / "dev").mkdir()
    (root / "dev/gpiochip0").touch()
    second = run(INSTALL, "--root", root, timeout=300)
    assert second.returncode == 0, second.stdout + second.stderr
    assert config.read_text() == edited
    assert "keeping existing" in second.stdout
    assert "lgpio is not installed" in second.stderr
    assert "sudo /opt/envagent/venv/bin/pip install 'lgpio>=0.2.2.0'" in second.stderr
    assert (venv / "bin/envagent").exists()

    # Unsent readings survive an uninstall; so does the config.
    outbox = root / "var/lib/envagent/outbox.sqlite"
    outbox.parent.mkdir(parents=True)
    outbox.write_bytes(b"unsent readings")
    removed = run(INSTALL, "--root", root, "--uninstall")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert not unit.exists() and not venv.exists() and not cli_link.is_symlink()
    assert outbox.read_bytes() == b"unsent readings"
    assert config.read_text() == edited

    purged = run(INSTALL, "--root", root, "--uninstall", "--purge")
    assert purged.returncode == 0, purged.stdout + purged.stderr
    assert not outbox.parent.exists() and not config.parent.exists()
    # Two installs (one creating the venv) and two removals; typically ~15 s with a warm pip cache.
    assert time.monotonic() - started < 240
