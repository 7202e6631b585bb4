"""The transports by URL scheme: one line to find one, one line to add one (as Telegraf's
``outputs.Add``). An ``[[uplink]]``'s URL scheme picks its transport -- for delivery
(:func:`build_sink`) and for ``envagent doctor``'s probes (:func:`transport_for`).

A new transport is one module that implements the Sink protocol
(agent.uplink.sink) and offers a :class:`~agent.uplink.sink.Transport` as ``TRANSPORT``, plus its
line here. A transport's module is imported when an upstream uses it: a unit that only posts
over HTTP never loads the HJ 212 or MQTT code (about 1.1 MiB of its memory).
"""

from __future__ import annotations

import importlib
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from urllib.parse import urlsplit

from agent.config import Config, UplinkConfig
from agent.core.errors import ConfigError
from agent.core.timebase import ExternalTime
from agent.uplink.sink import Sink, Transport

TRANSPORTS: Mapping[str, str] = {  # scheme -> the module offering its TRANSPORT
    "http": "agent.uplink.http",  # only to this machine (config: allow_insecure)
    "https": "agent.uplink.http",
    "hj212": "agent.uplink.hj212.transport",  # plain TCP to any host: HJ 212 has no TLS
    "mqtt": "agent.uplink.mqtt.transport",  # only to this machine (config: allow_insecure)
    "mqtts": "agent.uplink.mqtt.transport",
}


def transport_for(settings: UplinkConfig) -> Transport:
    """The transport of ``settings.url``'s scheme; a ConfigError naming the upstream and the
    schemes there are, for any other (the config is checked before anything starts, so this
    is a second line of defence, and doctor's)."""
    scheme = urlsplit(settings.url).scheme.lower()
    module = TRANSPORTS.get(scheme)
    if module is None:
        known = ", ".join(f"{s}://" for s in sorted(TRANSPORTS))
        shown = f"{scheme}://" if scheme else "a URL without a scheme"
        raise ConfigError([f"uplink '{settings.name}': url: no transport for {shown}; use one "
                           f"of {known}"])
    transport: Transport = importlib.import_module(module).TRANSPORT
    return transport


def build_sink(config: Config, settings: UplinkConfig, *, simulated: bool = False,
               wall: Callable[[], float] = time.time, data_dir: Path | None = None,
               external_time: ExternalTime | None = None) -> Sink:
    """The sink of one ``[[uplink]]``, by its URL's scheme. ``simulated``: every batch is marked
    a rehearsal's (agent.store.rehearsal); ``wall``: the clock a server's dates are read
    against (the worker's)."""
    return transport_for(settings).build(config, settings, simulated=simulated, wall=wall,
                                         data_dir=data_dir, external_time=external_time)
