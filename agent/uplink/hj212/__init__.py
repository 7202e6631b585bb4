"""HJ 212-2017 (污染物在线监控(监测)系统数据传输标准) over TCP to an ecological-environment
bureau's platform: the packet layer (packet), real-time data (realtime), the transport
(transport)."""
