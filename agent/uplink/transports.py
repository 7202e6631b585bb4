"""The transports by URL scheme: one line to find one, one line to add one (as Telegraf's
``outputs.Add``). An ``[[uplink]]``'s URL scheme picks its transport -- for delivery
(:func:`build_sink`) and for ``envagent doctor``'s probes (:func:`transport_for`).

A new transport is one module that implements the Sink protocol
(agent.uplink.sink) and offers a :class:`~agent.uplink.sink.Transport`, plus its line here.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from agent.config import Config, UplinkConfig
from agent.core.errors import ConfigError
from agent.core.timebase import ExternalTime
from agent.uplink import http
from agent.uplink.hj212 import transport as hj212
from agent.uplink.mqtt import transport as mqtt
from agent.uplink.sink import Sink, Transport

TRANSPORTS: Mapping[str, Transport] = {
    "http": http.TRANSPORT,  # only to this machine (config: allow_insecure)
    "https": http.TRANSPORT,
    "hj212": hj212.TRANSPORT,  # plain TCP to any host: HJ 212 has no TLS
    "mqtt": mqtt.TRANSPORT,  # only to this machine (config: allow_insecure)
    "mqtts": mqtt.TRANSPORT,
}


def transport_for(settings: UplinkConfig) -> Transport:
    """The transport of ``settings.url``'s scheme; a ConfigError naming the upstream and the
    schemes there are, for any other (the config is checked before anything starts, so this
    is a second line of defence, and doctor's)."""
    scheme = urlsplit(settings.url).scheme.lower()
    transport = TRANSPORTS.get(scheme)
    if transport is None:
        known = ", ".join(f"{s}://" for s in sorted(TRANSPORTS))
        shown = f"{scheme}://" if scheme else "a URL without a scheme"
        raise ConfigError([f"uplink '{settings.name}': url: no transport for {shown}; use one "
                           f"of {known}"])
    return transport


def build_sink(config: Config, settings: UplinkConfig, *, simulated: bool = False,
               wall: Callable[[], float] = time.time, data_dir: Path | None = None,
               external_time: ExternalTime | None = None) -> Sink:
    """The sink of one ``[[uplink]]``, by its URL's scheme. ``simulated``: every batch is marked
    a rehearsal's (agent.store.rehearsal); ``wall``: the clock a server's dates are read
    against (the worker's)."""
    return transport_for(settings).build(config, settings, simulated=simulated, wall=wall,
                                         data_dir=data_dir, external_time=external_time)
