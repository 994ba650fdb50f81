"""The shared vocabulary of the fleet: CRD API models and their generated manifests, events, plans, conditions,
quantities and well-known labels.

Guarantees: pure pydantic v2 models and functions only. Nothing here opens a connection, reads a clock or imports
NATS, SQLAlchemy or a Kubernetes client (an import-linter contract holds it), so every component — and every
test — can use it without services.
"""
