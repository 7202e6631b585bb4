"""MQTT: readings published to a broker (Mosquitto, EMQX, HiveMQ, ThingsBoard), QoS 1, the
outbox the source of truth (transport); topics from a template (topics); JSON batches, line
protocol or ThingsBoard telemetry as payloads (payload); MQTT 5 reason codes (reasons)."""
