"""The relay's chain key: an eth-account keystore file (Web3 Secret Storage, scrypt), opened with a password.

The password comes from the file named by ``$BTT_CHAIN_KEY_PASSWORD_FILE`` or from ``$BTT_CHAIN_KEY_PASSWORD``
(the file wins), never from the command line, the configuration or the database, and no message or log line
contains it or the private key. :func:`create_keystore` writes a keystore (mode 0600, atomically) from a new key or
from a private key the operator already has (an anvil development account, in the README's flow).
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from eth_account import Account
from eth_account.signers.local import LocalAccount

from cloud_relay.chain.errors import ChainConfigError
from runtime.durable import atomic_write_bytes

__all__ = ["PASSWORD_ENV", "PASSWORD_FILE_ENV", "create_keystore", "load_account", "read_password"]

PASSWORD_ENV = "BTT_CHAIN_KEY_PASSWORD"
PASSWORD_FILE_ENV = "BTT_CHAIN_KEY_PASSWORD_FILE"


def read_password(environ: dict[str, str] | None = None) -> str:
    """The keystore password from ``$BTT_CHAIN_KEY_PASSWORD_FILE`` (first line) or ``$BTT_CHAIN_KEY_PASSWORD``."""
    env = os.environ if environ is None else environ
    path = env.get(PASSWORD_FILE_ENV)
    if path:
        try:
            return Path(path).read_text(encoding="utf-8").splitlines()[0] if Path(path).stat().st_size else ""
        except OSError as exc:
            raise ChainConfigError(f"${PASSWORD_FILE_ENV}: cannot read {path}: {exc.strerror}") from exc
    password = env.get(PASSWORD_ENV)
    if password is None:
        raise ChainConfigError(f"the chain key's password: set ${PASSWORD_FILE_ENV} (a file) or ${PASSWORD_ENV}")
    return password


def load_account(path: Path, password: str) -> LocalAccount:
    """Decrypt the keystore at ``path``; :class:`ChainConfigError` names the file, never the password."""
    try:
        keystore: Any = json.loads(path.read_text(encoding="utf-8"))
    except OSError as exc:
        raise ChainConfigError(f"--chain-key {path}: {exc.strerror}") from exc
    except ValueError as exc:
        raise ChainConfigError(f"--chain-key {path}: not a JSON keystore") from exc
    try:
        secret = Account.decrypt(keystore, password)
    except (ValueError, TypeError, KeyError) as exc:
        raise ChainConfigError(f"--chain-key {path}: wrong password or not an eth-account keystore") from exc
    account: LocalAccount = Account.from_key(secret)
    return account


def create_keystore(path: Path, password: str, private_key: str | None = None, *, kdf_n: int = 2**18) -> str:
    """Write a keystore for ``private_key`` (hex; None: a new random key) to ``path``; returns its address.

    ``kdf_n`` is scrypt's work factor (the tests lower it; the default is eth-account's own).
    """
    if path.exists():
        raise ChainConfigError(f"{path} exists already; not overwriting a key")
    try:
        account: LocalAccount = Account.from_key(private_key) if private_key else Account.create()
    except (ValueError, TypeError) as exc:
        raise ChainConfigError("the private key must be 32 bytes of hex") from exc
    keystore = Account.encrypt(account.key, password, kdf="scrypt", iterations=kdf_n)
    atomic_write_bytes(path, json.dumps(keystore).encode("utf-8"), mode=0o600)
    return str(account.address)
