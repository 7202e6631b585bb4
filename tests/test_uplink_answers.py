"""What a server says back is read with a bound, parsed without crashing and logged without
secrets (issue 11, points 6, 10 and 12).

- A bound in bytes and time: a gzip bomb (1 MiB inflating to 1 GiB), an endless chunked body
  and a Content-Length that lies cost the real ``envagent sync`` process no more than a few KiB
  of answer: its peak RSS (its own ``VmHWM``) stays under ``RSS_LIMIT_MIB`` and it
  finishes. The child runs under an address-space limit, so a regression fails the test
  instead of swapping the machine.
- ``Retry-After``: RFC 9110's delay-seconds is ASCII digits only; anything else that is not an
  HTTP-date is ignored, never an exception, and every delay stays finite and clamped.
- Redaction: everything of a server's answer that reaches a log line, ``uplink-state.json`` or
  ``sync``'s output has its control characters stripped and the token removed -- whole, in its
  ``Basic`` form, the password alone, spread over white space, or cut by the read bound --
  before it is shortened.

The in-process tests inject a FakeClock (synchronised), so none depends on this machine's clock;
the ``sync`` processes deliver readings of another boot, stamped synchronised, which the agent
never holds back.
"""

from __future__ import annotations

import base64
import gzip
import json
import logging
import os
import random
import resource
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from httpfaults import Action, FaultServer, Handler, Received, endless, gzip_bomb, ok, status
from hypothesis import given
from hypothesis import strategies as st
from test_uplink import FAST, T0, make_uplink, said, samples

from agent.core.credentials import Secret, redact
from agent.core.reading import Reading
from agent.store.outbox import Outbox, Subscriber
from agent.uplink import httpwire
from agent.uplink.http import retry_after_seconds
from agent.uplink.worker import STATE_FILE, Outcome

ROOT = Path(__file__).resolve().parents[1]
TOKEN = "Qv7Kp2-SECRET-0d9e4c1b"  # a prefix no message holds by chance
BASIC_USER, BASIC_PASSWORD = "field-unit", "Pw9xQ7-hunter2-secret"
RSS_LIMIT_MIB = 64  # the whole `envagent sync` process, interpreter and libraries included
CHILD_ADDRESS_SPACE = 2 << 30  # a safety net for the machine, far above RSS_LIMIT_MIB
PROCESS_TIMEOUT_S = 60.0
MIN_LEAK = 4  # no run of this many characters of a secret may show

ONE = [Subscriber("default")]  # the one upstream of these tests


@pytest.fixture
def outbox(tmp_path: Path) -> Iterator[Outbox]:
    with Outbox(tmp_path / "outbox.sqlite", max_bytes=64 * 1024**2, subscribers=ONE) as box:
        yield box


def leaks(secret: str, text: str) -> list[str]:
    """Every piece of ``secret`` of ``MIN_LEAK`` or more characters found in ``text``."""
    return [secret[i:i + MIN_LEAK] for i in range(len(secret) - MIN_LEAK + 1)
            if secret[i:i + MIN_LEAK] in text]


# --- the bound, in the real process -----------------------------------------------------------


def station(tmp_path: Path, url: str, token: str = TOKEN) -> Path:
    """A config, a token file and an outbox of readings from another boot, synchronised."""
    token_file = tmp_path / "upload-token"
    token_file.write_text(token + "\n")
    token_file.chmod(0o600)
    data = tmp_path / "data"
    with Outbox(data / "outbox.sqlite", max_bytes=1 << 20, subscribers=ONE) as box:
        box.append([Reading("air", "temperature", 21.5, "°C", T0 + i, i, "another-boot", True)
                    for i in range(5)])
    config = tmp_path / "envagent.toml"
    config.write_text(f'[unit]\nid = "u1"\nsite = "Roof"\n[storage]\npath = "{data}"\n'
                      f'[uplink]\nurl = "{url}"\nallow_insecure_http = true\n'
                      f'token_file = "{token_file}"\nconnect_timeout = "1s"\n'
                      'read_timeout = "2s"\ndeadline = "3s"\n', encoding="utf-8")
    return config


# The child's own peak RSS: VmHWM of its address space, written as it exits. Not wait4's
# ru_maxrss: Linux carries the parent's peak into a child across fork and exec, so a child of a
# large pytest process would report pytest's size.
PEAK_WRAPPER = """
import atexit, sys
def peak(path=sys.argv[1]):
    with open("/proc/self/status") as status:
        line = next(line for line in status if line.startswith("VmHWM:"))
    with open(path, "w") as out:
        out.write(line.split()[1])
atexit.register(peak)
sys.argv = ["envagent", *sys.argv[2:]]
from agent.cli.main import main

sys.exit(main())
"""


def sync_measured(config: Path, tmp_path: Path) -> tuple[int, float, float, str, str]:
    """``envagent sync --json`` as a child: exit code, peak RSS (MiB), seconds, out, err."""
    out, err, peak = tmp_path / "sync.out", tmp_path / "sync.err", tmp_path / "sync.peak"
    env = {k: v for k, v in os.environ.items() if "TOKEN" not in k}
    started = time.monotonic()
    with out.open("wb") as stdout, err.open("wb") as stderr:
        child = subprocess.Popen(  # noqa: S603 - our own interpreter and module
            [sys.executable, "-c", PEAK_WRAPPER, str(peak), "sync", "--config", str(config),
             "--json"],
            cwd=tmp_path, stdout=stdout, stderr=stderr, stdin=subprocess.DEVNULL,
            env={**env, "PYTHONPATH": str(ROOT)})
    # before it has even imported requests; a regression then fails here, not the machine
    resource.prlimit(child.pid, resource.RLIMIT_AS, (CHILD_ADDRESS_SPACE, CHILD_ADDRESS_SPACE))
    while True:
        pid, code, _ = os.wait4(child.pid, os.WNOHANG)
        if pid:
            break
        if time.monotonic() - started > PROCESS_TIMEOUT_S:
            child.kill()
            child.wait()
            pytest.fail(f"envagent sync still running after {PROCESS_TIMEOUT_S:.0f} s")
        time.sleep(0.02)
    took = time.monotonic() - started
    child.returncode = os.waitstatus_to_exitcode(code)  # reaped here, not by Popen
    assert peak.exists(), err.read_text(errors="replace")
    return (child.returncode, int(peak.read_text()) / 1024, took,
            out.read_text(errors="replace"), err.read_text(errors="replace"))


HOSTILE = {
    "gzip bomb": lambda: gzip_bomb(503),
    "endless chunked body": lambda: endless(503),
    "a Content-Length of a terabyte": lambda: endless(503, chunked=False),
    "endless chunked deflate": lambda: endless(503, gzipped=True),
}


@pytest.mark.parametrize("answer", list(HOSTILE), ids=list(HOSTILE))
def test_a_hostile_answer_costs_the_sync_process_a_few_kib(answer: str, tmp_path: Path) -> None:
    with FaultServer() as server:
        server.default = HOSTILE[answer]()
        code, rss_mib, took, out, err = sync_measured(station(tmp_path, server.url()), tmp_path)
    assert rss_mib < RSS_LIMIT_MIB, f"peak RSS {rss_mib:.1f} MiB"
    assert took < PROCESS_TIMEOUT_S / 2
    assert code == 1, err  # a 503: nothing delivered, reported, no crash
    assert "Traceback" not in err and "MemoryError" not in err, err
    report = json.loads(out)
    assert report["ok"] is False and report["error"].startswith("HTTP 503"), report
    assert len(report["error"]) <= 2 * httpwire.REPLY_TEXT_CHARS


def test_a_hostile_answer_is_read_bounded_in_bytes_and_time(outbox: Outbox,
                                                             tmp_path: Path) -> None:
    outbox.append(samples(3))
    with FaultServer() as server:
        uplink = make_uplink(server.url(), outbox, tmp_path)
        for action in (endless(503), endless(503, chunked=False),
                       endless(429, gzipped=True), gzip_bomb(200)):
            server.then(action)
            started = time.monotonic()
            step = uplink.step()
            took = time.monotonic() - started
            assert said(step) in ("HTTP 200", "HTTP 429", "HTTP 503"), step.answer
            assert step.answer is not None and step.answer.detail.isprintable()
            text = step.answer.detail.partition(": ")[2]  # the server's, after the status
            assert len(text) <= httpwire.REPLY_TEXT_CHARS
            assert took < FAST["deadline"], took  # cut by the bound, not by the deadline
    assert step.outcome is Outcome.DELIVERED and outbox.stats().delivered == 9


def test_small_answers_keep_the_connection_alive(outbox: Outbox, tmp_path: Path) -> None:
    """Reading with a bound must not cost the keep-alive: a 204 and a short 400 are read to
    their end, so the next POST goes on the same connection."""
    ports: list[int] = []

    def noting(inner: Action) -> Action:
        def act(handler: Handler, request: Received) -> None:
            ports.append(handler.client_address[1])
            inner(handler, request)

        return act

    outbox.append(samples(2))
    with FaultServer() as server:
        server.default = noting(ok())
        uplink = make_uplink(server.url(), outbox, tmp_path, batch_size=3)
        server.then(noting(status(503, b'{"error":"busy"}' * 20)))
        steps = [uplink.step() for _ in range(3)]
    assert [s.outcome for s in steps] == [Outcome.RETRY, Outcome.DELIVERED, Outcome.DELIVERED]
    assert steps[0].answer is not None
    assert steps[0].answer.detail.startswith('HTTP 503: {"error":"busy"}')
    assert len(set(ports)) == 1, ports


# --- Retry-After ----------------------------------------------------------------------------


@pytest.mark.parametrize(("value", "seconds"), [
    ("²", None), ("1²", None), ("٣", None), ("１２", None), ("+5", None), ("1.5", None),
    ("9" * 5000, 1e9), ("0" * 5000 + "7", 7.0), (" 12 ", 12.0),
    ("01 Jan 2026 00:00:00 +999999999999999999999", None),
    ("Fri, 31 Dec 99999 23:59:59 GMT", None), ("Thu, 01 Jan 2026 25:61:61 GMT", None),
    ("Mon, 01 Jan 0001 00:00:00 +2359", 0.0), ("Fri, 31 Dec 9999 23:59:59 -2359", 1e9),
])
def test_retry_after_never_raises(value: str, seconds: float | None) -> None:
    assert retry_after_seconds(value, T0 / 1e9) == seconds


@given(st.one_of(
    st.text(max_size=60),
    st.from_regex(r"\A[A-Za-z]{3}, [0-9]{1,6} [A-Za-z]{3} -?[0-9]{1,7} [0-9:]{1,9} "
                  r"([A-Z]{1,4}|[+-][0-9]{1,25})\Z"),
    st.text(alphabet="0123456789", min_size=1, max_size=6000),
))
def test_no_retry_after_value_raises_or_escapes_the_clamp(value: str) -> None:
    seconds = retry_after_seconds(value, T0 / 1e9)
    assert seconds is None or 0.0 <= seconds <= 1e9


@pytest.mark.parametrize("value", ["²", "9" * 5000, "01 Jan 2026 00:00:00 +99999999999999999999"])
def test_an_unparseable_retry_after_is_ignored_by_the_worker(value: str, outbox: Outbox,
                                                             tmp_path: Path) -> None:
    outbox.append(samples(2))
    with FaultServer() as server:
        server.then(status(429, b"slow down", {"Retry-After": value}))
        uplink = make_uplink(server.url(), outbox, tmp_path, retry_after_max=30.0)
        step = uplink.step()  # used to raise ValueError: a 5-minute stall in the daemon
        assert step.outcome is Outcome.RETRY and step.wait <= 30.0
        assert uplink.step().outcome is Outcome.DELIVERED


def test_a_retry_after_of_5000_digits_is_clamped(outbox: Outbox, tmp_path: Path) -> None:
    outbox.append(samples(1))
    with FaultServer() as server:
        server.then(status(503, headers={"Retry-After": "9" * 5000}))
        step = make_uplink(server.url(), outbox, tmp_path, retry_after_max=42.0).step()
    assert (step.outcome, step.wait) == (Outcome.RETRY, 42.0)


def test_sync_with_a_non_ascii_retry_after_reports_instead_of_a_traceback(
        tmp_path: Path) -> None:
    with FaultServer() as server:
        server.default = status(503, b"maintenance", {"Retry-After": "²"})
        code, _, _, out, err = sync_measured(station(tmp_path, server.url()), tmp_path)
    assert code == 1 and "Traceback" not in err, err
    assert json.loads(out)["error"] == "HTTP 503: maintenance"


# --- redaction ------------------------------------------------------------------------------


def everything_shown(caplog: pytest.LogCaptureFixture, tmp_path: Path, reply_text: str) -> str:
    return "\n".join([caplog.text, (tmp_path / STATE_FILE).read_text(encoding="utf-8"),
                      reply_text])


ECHOES = {
    "after 1,190 spaces": lambda: b" " * 1190 + TOKEN.encode(),
    "after 100,000 spaces": lambda: b" " * 100_000 + TOKEN.encode(),
    "cut where the answer is cut": lambda: b" " * (httpwire.REPLY_KEEP_BYTES - 7)
    + TOKEN.encode() * 2,
    "spread over lines": lambda: f"token {TOKEN[:9]}\r\n\t{TOKEN[9:]} refused".encode(),
    "between control characters": lambda: f"\x1b[2J{TOKEN[:5]}\x00{TOKEN[5:]}\x07".encode(),
    "JSON-escaped": lambda: json.dumps({"token": TOKEN.replace("-", "/")}).replace(
        "/", "\\/").encode(),
    "gzip, cut by the inflate bound": lambda: gzip.compress(
        b" " * (httpwire.REPLY_KEEP_BYTES - 6) + TOKEN.encode() * 3),
}


@pytest.mark.parametrize("name", list(ECHOES), ids=list(ECHOES))
def test_no_piece_of_the_token_is_logged_or_saved(name: str, outbox: Outbox, tmp_path: Path,
                                                  caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    token = TOKEN.replace("-", "/") if name == "JSON-escaped" else TOKEN
    headers = {"Content-Encoding": "gzip"} if name.startswith("gzip") else {}
    outbox.append(samples(1))
    with FaultServer() as server:
        server.then(status(401, ECHOES[name](), headers))
        uplink = make_uplink(server.url(), outbox, tmp_path, token=lambda: Secret(token))
        step = uplink.step()
    assert step.outcome is Outcome.AUTH and step.answer is not None
    shown = everything_shown(caplog, tmp_path, step.answer.detail)
    assert not leaks(token, shown), leaks(token, shown)
    assert "<redacted>" in shown or name == "after 100,000 spaces"  # beyond what is read
    assert not any(c in shown for c in "\x00\x07\x1b\r\t")


def test_a_basic_auth_password_echoed_alone_is_removed(outbox: Outbox, tmp_path: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    user_pass = f"{BASIC_USER}:{BASIC_PASSWORD}"
    encoded = base64.b64encode(user_pass.encode()).decode()
    outbox.append(samples(1))
    with FaultServer() as server:
        server.then(status(401, f"wrong password {BASIC_PASSWORD} for {BASIC_USER} "
                              f"(Basic {encoded[:-3]}".encode()))
        uplink = make_uplink(server.url(), outbox, tmp_path, auth="basic",
                             token=lambda: Secret(user_pass))
        step = uplink.step()
    assert step.answer is not None
    shown = everything_shown(caplog, tmp_path, step.answer.detail)
    assert not leaks(BASIC_PASSWORD, shown) and encoded[:-3] not in shown, shown
    assert BASIC_USER in shown  # a user name is no secret: it helps find the mistake


def test_a_redirect_location_is_redacted_and_stripped(outbox: Outbox, tmp_path: Path) -> None:
    outbox.append(samples(1))
    with FaultServer() as server:
        server.then(status(308, headers={"Location": f"https://x.org/w?\x1b[31mt={TOKEN}"}))
        step = make_uplink(server.url(), outbox, tmp_path, token=lambda: Secret(TOKEN)).step()
    assert step.outcome is Outcome.FAILED and step.answer is not None
    state = (tmp_path / STATE_FILE).read_text(encoding="utf-8")
    for shown in (step.answer.detail, step.answer.hint, state):
        assert not leaks(TOKEN, shown) and "\x1b" not in shown and "\\u001b" not in shown


def test_redact_strips_redacts_then_shortens() -> None:
    secret = Secret(TOKEN)
    assert redact(" " * 290 + "x" * 5 + TOKEN, secret, limit=300) == "xxxxx<redacted>"
    cut = redact("y" * 295 + TOKEN, secret, limit=300)
    assert not leaks(TOKEN, cut) and len(cut) <= 300
    assert redact(f"a\x00b\x1b[1mc\u0085d\ne  f {TOKEN[:6]}", secret, cut=True) == \
        "a b [1mc d e f <redacted>"
    assert redact(f"x {TOKEN[:6]}... y", secret) == "x <redacted>... y"  # a shortened echo
    assert redact(f"x {TOKEN[:3]}", secret) == f"x {TOKEN[:3]}"  # too short to tell, not cut
    assert redact(f"x {TOKEN[:3]}", secret, cut=True) == "x <redacted>"
    assert redact("", Secret("")) == "" and redact("a b", Secret("")) == "a b"
    assert redact("GET https://me:hunter2@x.org/w failed", None) == \
        "GET https://me:***@x.org/w failed"
    assert redact("plain", None, limit=3) == "pl…"


@given(st.text(alphabet=" \t\n\x00x" + TOKEN, max_size=400), st.integers(10, 400),
       st.booleans())
def test_redact_never_shows_a_run_of_the_token(text: str, limit: int, cut: bool) -> None:
    shown = redact(text + TOKEN + text, Secret(TOKEN), limit=limit, cut=cut)
    assert len(shown) <= limit and TOKEN not in shown
    assert not any(c in shown for c in "\t\n\x00")


def test_a_random_server_answer_never_leaks_the_token() -> None:
    rng = random.Random(11)
    secret = Secret(TOKEN)
    for _ in range(300):
        junk = "".join(rng.choice(" \r\n\t\x00\x1b\\") for _ in range(rng.randrange(4)))
        spread = junk.join(TOKEN) if rng.random() < 0.5 else TOKEN
        text = " " * rng.randrange(2000) + spread + " " * rng.randrange(5)
        end = rng.randrange(len(text) + 1)
        shown = redact(text[:end], secret, cut=end < len(text), limit=300)
        assert not leaks(TOKEN, shown.replace(" ", "")), (text[:end], shown)
