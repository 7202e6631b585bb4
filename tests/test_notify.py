"""sd_notify client against real AF_UNIX datagram sockets, as systemd would receive them."""

from __future__ import annotations

import logging
import os
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent.runtime.notify import START_EXTEND_EVERY_S, START_EXTEND_S, Notifier


@pytest.fixture
def path_socket(tmp_path: Path) -> Iterator[tuple[str, socket.socket]]:
    """A notify socket bound at a filesystem path, the way PID 1 binds /run/systemd/notify."""
    path = tmp_path / "notify"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    receiver.settimeout(2)
    yield str(path), receiver
    receiver.close()


@pytest.fixture
def abstract_socket() -> Iterator[tuple[str, socket.socket]]:
    """A notify socket in the abstract namespace, named "@..." in NOTIFY_SOCKET."""
    name = f"envagent-test-{uuid.uuid4().hex}"
    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind("\0" + name)
    receiver.settimeout(2)
    yield "@" + name, receiver
    receiver.close()


def received(receiver: socket.socket) -> bytes:
    return receiver.recv(4096)


def nothing_pending(receiver: socket.socket) -> bool:
    receiver.setblocking(False)
    try:
        receiver.recv(4096)
    except BlockingIOError:
        return True
    finally:
        receiver.settimeout(2)
    return False


def test_each_message_is_one_exact_datagram(path_socket: tuple[str, socket.socket]) -> None:
    name, receiver = path_socket
    notifier = Notifier({"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "30000000"}, pid=os.getpid())

    assert notifier.enabled
    assert notifier.ready()
    assert received(receiver) == b"READY=1"
    assert notifier.status("sampling 3 sensors, backlog 0")
    assert received(receiver) == b"STATUS=sampling 3 sensors, backlog 0"
    assert notifier.watchdog()
    assert received(receiver) == b"WATCHDOG=1"
    assert notifier.extend_timeout(45)
    assert received(receiver) == b"EXTEND_TIMEOUT_USEC=45000000"
    assert notifier.stopping()
    assert received(receiver) == b"STOPPING=1"
    notifier.close()


def test_abstract_socket(abstract_socket: tuple[str, socket.socket]) -> None:
    name, receiver = abstract_socket
    notifier = Notifier({"NOTIFY_SOCKET": name})

    assert notifier.ready()
    assert received(receiver) == b"READY=1"


def test_long_start_up_work_asks_for_more_time_at_a_bounded_pace(
        path_socket: tuple[str, socket.socket]) -> None:
    name, receiver = path_socket
    now = [100.0]
    notifier = Notifier({"NOTIFY_SOCKET": name}, monotonic=lambda: now[0])
    extend = f"EXTEND_TIMEOUT_USEC={round(START_EXTEND_S * 1e6)}".encode()

    assert notifier.still_starting()
    assert received(receiver) == extend
    now[0] += START_EXTEND_EVERY_S / 2
    assert not notifier.still_starting()  # a salvage calls it every 1,000 rows: not a flood
    assert nothing_pending(receiver)
    now[0] += START_EXTEND_EVERY_S / 2
    assert notifier.still_starting()
    assert received(receiver) == extend
    assert START_EXTEND_S >= 4 * START_EXTEND_EVERY_S  # a late call or two never lets it lapse


def test_status_cannot_inject_assignments(path_socket: tuple[str, socket.socket]) -> None:
    name, receiver = path_socket
    notifier = Notifier({"NOTIFY_SOCKET": name})

    notifier.status("sensor 'x\nREADY=1' failed")

    assert received(receiver) == b"STATUS=sensor 'x READY=1' failed"


def test_without_notify_socket_everything_is_a_no_op() -> None:
    notifier = Notifier({"WATCHDOG_USEC": "30000000"})

    assert not notifier.enabled
    assert notifier.watchdog_interval() is None
    assert notifier.ready() is False
    assert notifier.status("x") is False
    assert notifier.watchdog() is False
    assert notifier.stopping() is False


def test_environment_is_read_at_construction(path_socket: tuple[str, socket.socket]) -> None:
    name, receiver = path_socket
    environ = {"NOTIFY_SOCKET": name}
    notifier = Notifier(environ)
    environ.clear()

    assert notifier.ready()
    assert received(receiver) == b"READY=1"


def test_watchdog_interval_is_half_the_timeout() -> None:
    notifier = Notifier({"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": "30000000"})

    assert notifier.watchdog_interval() == 15.0


def test_watchdog_for_this_pid_is_enabled() -> None:
    notifier = Notifier(
        {"NOTIFY_SOCKET": "@n", "WATCHDOG_USEC": "1000000", "WATCHDOG_PID": "4242"}, pid=4242
    )

    assert notifier.watchdog_interval() == 0.5


def test_watchdog_pid_mismatch_disables_the_watchdog(
    path_socket: tuple[str, socket.socket],
) -> None:
    name, receiver = path_socket
    notifier = Notifier(
        {"NOTIFY_SOCKET": name, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "4242"}, pid=4343
    )

    assert notifier.watchdog_interval() is None
    assert notifier.watchdog() is False
    assert nothing_pending(receiver)
    # Readiness still goes through: only the watchdog belongs to another process.
    assert notifier.ready()
    assert received(receiver) == b"READY=1"


@pytest.mark.parametrize("usec", ["0", "-5", "thirty", ""])
def test_invalid_watchdog_usec_disables_the_watchdog(usec: str) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": "/run/systemd/notify", "WATCHDOG_USEC": usec})

    assert notifier.watchdog_interval() is None


def test_no_watchdog_usec_means_no_watchdog(path_socket: tuple[str, socket.socket]) -> None:
    name, receiver = path_socket
    notifier = Notifier({"NOTIFY_SOCKET": name})

    assert notifier.watchdog_interval() is None
    assert notifier.watchdog() is False
    assert nothing_pending(receiver)


@pytest.mark.parametrize("name", ["relative/notify", "@", "vsock:2:1234"])
def test_unusable_socket_names_are_a_no_op(name: str) -> None:
    notifier = Notifier({"NOTIFY_SOCKET": name})

    assert not notifier.enabled
    assert notifier.ready() is False


def test_send_failure_never_raises_and_warns_once(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    notifier = Notifier(
        {"NOTIFY_SOCKET": str(tmp_path / "gone"), "WATCHDOG_USEC": "30000000"}, pid=7
    )

    with caplog.at_level(logging.DEBUG, logger="envagent.notify"):
        assert notifier.ready() is False
        assert notifier.watchdog() is False
        assert notifier.watchdog() is False

    warnings = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1
    assert "gone" in warnings[0].getMessage()


def test_recovers_when_the_socket_comes_back(tmp_path: Path) -> None:
    path = tmp_path / "notify"
    notifier = Notifier({"NOTIFY_SOCKET": str(path)})
    assert notifier.ready() is False  # nobody listening yet

    receiver = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    receiver.bind(str(path))
    receiver.settimeout(2)
    try:
        assert notifier.status("back")
        assert received(receiver) == b"STATUS=back"
    finally:
        receiver.close()


def test_a_service_manager_that_reads_nothing_never_stalls_the_agent(
        path_socket: tuple[str, socket.socket]) -> None:
    import threading

    name, _receiver = path_socket  # bound, never read: its queue fills up
    notifier = Notifier({"NOTIFY_SOCKET": name}, pid=os.getpid())
    results: list[bool] = []
    sender = threading.Thread(target=lambda: results.extend(
        notifier.status(f"busy {i}") for i in range(5000)), daemon=True)
    sender.start()
    sender.join(timeout=10)
    assert not sender.is_alive(), "sd_notify blocked on a full socket"
    assert results[0] is True and results[-1] is False  # the queue filled; messages were lost
