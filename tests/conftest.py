"""Session-wide fixtures: real Postgres and NATS (tests.fixtures.services), the real kwok fleet
(tests.fixtures.fleet), an in-process operator bound to one test's namespace (tests.fixtures.operator), and the
pod network plus model-server emulator that let kwok pods answer HTTP (tests.fixtures.podnet)."""

pytest_plugins = [
    "tests.fixtures.services",
    "tests.fixtures.fleet",
    "tests.fixtures.operator",
    "tests.fixtures.podnet",
]
