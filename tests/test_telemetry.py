"""Counters and OpenTelemetry metrics (the API's global meter provider is process-wide and can be set
once, so that part runs in a child interpreter)."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from lakebase._telemetry import Counters

CHILD = textwrap.dedent("""
    from opentelemetry import metrics

    recorded = []

    class Counter(metrics.NoOpCounter):
        def __init__(self, name):
            super().__init__(name)
            self.counter_name = name

        def add(self, amount, attributes=None, context=None):
            recorded.append((self.counter_name, amount, dict(attributes or {})))

    class Meter(metrics.NoOpMeter):
        def create_counter(self, name, unit="", description=""):
            return Counter(name)

    class Provider(metrics.NoOpMeterProvider):
        def get_meter(self, name, version=None, schema_url=None, attributes=None):
            return Meter(name)

    from lakebase._telemetry import Counters

    early = Counters("credential", source="endpoint x")
    early.add("mints")                      # before the application sets its provider: a proxy
    metrics.set_meter_provider(Provider())
    early.add("mints")
    Counters("connect", target="t").add("retries", 2)
    print(recorded)
""")


def test_counters() -> None:
    c = Counters("connect", target="t")
    c.add("attempts")
    c.add("attempts", 2)
    assert c.get("attempts") == 3 and c.snapshot() == {"attempts": 3} and c.get("nope") == 0
    c.after_fork()
    assert c.snapshot() == {}


def test_opentelemetry_counters_follow_the_applications_meter_provider() -> None:
    out = subprocess.run([sys.executable, "-c", CHILD], capture_output=True, text=True, check=True).stdout
    assert eval(out) == [  # our own child's repr of a list of tuples
        ("lakebase.credential.mints", 1, {"source": "endpoint x"}),
        ("lakebase.connect.retries", 2, {"target": "t"}),
    ]
