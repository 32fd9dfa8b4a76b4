"""The audit trail: the typed event, the hash chain, checkpoints and offline verification (pure),
and the sinks that hand events to the writer.

The pure modules (event, chain, checkpoint, verify, export) import nothing below `core`/`policies`:
`bastion audit verify` runs them without SQLAlchemy, Redis or Litestar installed.
"""
