"""Session-wide fixtures: real Postgres and NATS (tests.fixtures.services), the real kwok fleet
(tests.fixtures.fleet), an in-process operator bound to one test's namespace (tests.fixtures.operator), and the
pod network plus model-server emulator that let kwok pods answer HTTP (tests.fixtures.podnet), and a real Prometheus
scraping those pods (tests.fixtures.prometheus)."""

import os

# kwok pods serve no HTTP of their own: an agent that scraped their made-up (private-range) addresses would send
# packets off this machine. Every operator process the tests start inherits this unless a test turns scraping on
# deliberately (and then only towards the pod network the tests create, tests.fixtures.podnet).
os.environ.setdefault("LLMOP_LOAD_INTERVAL_SECONDS", "0")

pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.fleet",
    "tests.fixtures.operator",
    "tests.fixtures.podnet",
    "tests.fixtures.prometheus",
]
