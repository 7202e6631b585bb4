"""The VictoriaMetrics harness itself: line protocol in, exact values and ms timestamps out."""

from __future__ import annotations

from victoriametrics import VictoriaMetrics

# Tag values escape space, comma and equals with a backslash (InfluxDB line protocol).
SITE_ESCAPED = "汉中\\ wetland\\,\\ east"
SITE = "汉中 wetland, east"
LINES = f"""\
smoke,site={SITE_ESCAPED},sensor=air temperature=21.5,humidity=40.25 1700000000123456789
smoke,site={SITE_ESCAPED},sensor=air temperature=-0.1 1700000001123999999
smoke,site={SITE_ESCAPED},sensor=soil temperature=1e-300 1700000002000000000
"""


def test_line_protocol_round_trips_through_export(victoriametrics: VictoriaMetrics) -> None:
    victoriametrics.delete_series('{__name__=~"smoke_.*"}')
    victoriametrics.write(LINES)
    victoriametrics.write(LINES)  # a replay: -dedup.minScrapeInterval keeps one copy
    series = victoriametrics.query_export('{__name__=~"smoke_.*"}')
    assert series == [
        {"metric": {"__name__": "smoke_humidity", "sensor": "air", "site": SITE},
         "values": [40.25], "timestamps": [1700000000123]},
        {"metric": {"__name__": "smoke_temperature", "sensor": "air", "site": SITE},
         "values": [21.5, -0.1], "timestamps": [1700000000123, 1700000001123]},  # truncated
        {"metric": {"__name__": "smoke_temperature", "sensor": "soil", "site": SITE},
         "values": [1e-300], "timestamps": [1700000002000]},
    ]


def test_delete_series_gives_a_clean_slate(victoriametrics: VictoriaMetrics) -> None:
    victoriametrics.write("smoke_delete,site=x value=1 1700000000000000000\n")
    assert len(victoriametrics.query_export('{__name__="smoke_delete_value"}')) == 1
    victoriametrics.delete_series('{__name__="smoke_delete_value"}')
    assert victoriametrics.query_export('{__name__="smoke_delete_value"}') == []
