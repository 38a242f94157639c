"""Service-right receipts on the box: the device identity, local balances of rights, the durable receipt book.

Modules: ``identity`` (device key, certificate, study salt, rotation), ``grants`` (rights installed and their
balances), ``book`` (the durable receipt book: the hook other components call), ``service`` (the agent's
settlement service). The formats and their verification, which the relay shares, are in :mod:`protocol`.
"""
