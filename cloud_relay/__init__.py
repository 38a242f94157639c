"""The cloud relay: verifies and stores what devices publish, settles, and serves the clinic API.

Modules, one concept each: ``config`` (frozen settings), ``errors`` (the exception tree), ``storage`` (SQLite or
PostgreSQL behind one small interface), ``registry`` (clinics, tokens, devices, certificates, revocations),
``messages`` (up messages parsed and validated at the boundary: typed items, or refusals with their reasons),
``ingest`` (verify with :mod:`protocol.verify`, store once, build the acks), ``consumer`` (MQTT v5 shared
subscription, acks after the commit), ``ledger`` (payouts per clinic and owner per month), ``clinic`` (what a
clinic may read), ``api`` (the clinic HTTP API), ``cli`` (``btt-relay``).
"""
