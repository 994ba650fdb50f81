"""The Postgres store: the event log, the projections folded from it, and every read and write of them.

Guarantees: the only package that imports SQLAlchemy or asyncpg (an import-linter contract holds it); driver errors
leave it as `store.errors.StoreError`. The schema, including the reporting views, changes only through
`migrations/`.
"""
