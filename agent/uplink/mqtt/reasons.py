"""MQTT 5 reason codes (OASIS MQTT Version 5.0, 2.4 table 2-6) in the worker's words.

Only this module knows them. A code arrives in a CONNACK (the connection), a PUBACK (one
message) or a DISCONNECT the broker sent (the connection, often about the message that made it
send one). MQTT 5 rather than 3.1.1 for exactly this: a 3.1.1 broker answers a message it drops
(too large, not allowed) with a plain PUBACK, indistinguishable from one it took, and refuses a
connection with five codes; MQTT 5 says what went wrong, per message.

========================================  ==============  =====================================
code                                      outcome         like HTTP
========================================  ==============  =====================================
0x00 success, 0x10 no matching            delivered       2xx (the broker took the message;
subscribers                                               who it goes to is the broker's)
0x86 bad user name or password, 0x87 not  auth            401, 403
authorized, 0x8A banned, 0x8C bad
authentication method
0x95 packet too large                     too large       413
0x99 payload format invalid               rejected        400
0x80 unspecified, 0x83 implementation     retry           5xx
specific, 0x88 server unavailable, 0x89
server busy, 0x8B server shutting down,
0x8E session taken over, 0x91 packet id
in use, 0x97 quota exceeded, 0x9F
connection rate exceeded, anything else
0x84 unsupported protocol version, 0x85   failed          misconfiguration, with a hint
client id not valid, 0x90 topic name
invalid, 0x9A retain not supported, 0x9B
QoS not supported, 0x9C use another
server, 0x9D server moved
========================================  ==============  =====================================
"""

from __future__ import annotations

from agent.uplink.sink import Outcome

SUCCESS = 0x00
NO_MATCHING_SUBSCRIBERS = 0x10
TOO_LARGE = 0x95
TAKEN_OVER = 0x8E  # another connection with the same client id
ACCEPTED = frozenset({SUCCESS, NO_MATCHING_SUBSCRIBERS})

_OUTCOMES = {
    0x86: Outcome.AUTH, 0x87: Outcome.AUTH, 0x8A: Outcome.AUTH, 0x8C: Outcome.AUTH,
    TOO_LARGE: Outcome.TOO_LARGE,
    0x99: Outcome.REJECTED,
    0x84: Outcome.FAILED, 0x85: Outcome.FAILED, 0x90: Outcome.FAILED, 0x9A: Outcome.FAILED,
    0x9B: Outcome.FAILED, 0x9C: Outcome.FAILED, 0x9D: Outcome.FAILED,
}
_HINTS = {
    0x84: "the broker does not speak MQTT 5, which envagent needs (its per-message answers); "
          "Mosquitto 1.6+, EMQX 4.3+, HiveMQ 4+ and ThingsBoard 3.5+ do",
    0x85: "the broker refuses the client id: set client_id to one it accepts",
    0x90: "the broker refuses the topic: check topic and status_prefix against its rules",
    0x9A: "the broker does not keep retained messages, which the status topic needs",
    0x9B: "the broker does not take QoS 1, which delivery needs",
    0x9C: "the broker sends clients elsewhere: set url to the broker it names",
    0x9D: "the broker has moved: set url to its new address",
}
AUTH_HINT = ("put a user name and password the broker accepts in the credentials file "
             "(user:password; a ThingsBoard device's access token alone) and check the broker's "
             "ACL for the topics; it is read again every auth_retry, no restart needed")
RETRY_HINT = "delivery retries by itself; if this lasts, check the network and the broker"
MALFORMED_HINT = ("delivery retries by itself; if this lasts, check that url names an MQTT 5 "
                  "broker (not another service on that port) and the broker's health")
TOO_LARGE_HINT = "the batch is split until its messages fit; lower max_message_bytes to match"
TAKEN_OVER_HINT = ("another client connected with this client id and took the session over: "
                   "give each unit and upstream its own client_id")


def outcome(code: int) -> Outcome:
    """What a reason code other than success means for the readings it answers."""
    if code in ACCEPTED:
        return Outcome.DELIVERED
    return _OUTCOMES.get(code, Outcome.RETRY)


def hint(code: int) -> str:
    """What to do about a reason code."""
    kind = outcome(code)
    if code in _HINTS:
        return _HINTS[code]
    if code == TAKEN_OVER:
        return TAKEN_OVER_HINT
    if kind is Outcome.AUTH:
        return AUTH_HINT
    if kind is Outcome.TOO_LARGE:
        return TOO_LARGE_HINT
    return RETRY_HINT if kind is Outcome.RETRY else ""


def words(code: int, name: str) -> str:
    """``0x87 Not authorized``: the code and its name, for people."""
    return f"0x{code:02X} {name}"
