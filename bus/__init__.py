"""The NATS JetStream bus: subject names, streams, durable publishing and ordered reading.

Guarantees: the only package that imports ``nats`` (an import-linter contract holds it); every NATS client error
leaves it as `bus.errors.BusUnavailable` (transient: retry after a pause).
"""
