"""Session-wide fixtures: real Postgres and NATS (tests.fixtures.services), the real kwok fleet
(tests.fixtures.fleet), and an in-process operator bound to one test's namespace (tests.fixtures.operator)."""

pytest_plugins = ["tests.fixtures.services", "tests.fixtures.fleet", "tests.fixtures.operator"]
