"""The portal's languages: message catalogues (data files), the choice of locale, and lookup.

The catalogues are ``locales/<locale>.json``, one object of message id to text with ``{name}`` placeholders;
both hold the same ids (the tests check). :func:`negotiate` picks the locale: the ``btt_lang`` cookie when it
names one of :data:`LOCALES` (the switch in the page header sets it), else the best match of the browser's
``Accept-Language`` (RFC 9110 quality values; ``zh``, ``zh-CN``, ``zh-Hans``, ``zh-SG`` are Simplified Chinese),
else English. A header that does not parse is read as far as it does: a bad language tag never raises.
"""

from __future__ import annotations

import functools
import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

__all__ = ["DEFAULT", "LANG_COOKIE", "LOCALES", "Translator", "catalogue", "negotiate"]

LOCALES = ("en", "zh-CN")
DEFAULT = "en"
LANG_COOKIE = "btt_lang"
_DIR = Path(__file__).with_name("locales")
_SIMPLIFIED = ("zh", "zh-cn", "zh-hans", "zh-sg", "zh-my", "zh-hans-cn")
_RANGE = re.compile(r"^\s*([A-Za-z]{1,8}(?:-[A-Za-z0-9]{1,8})*|\*)\s*(?:;\s*q\s*=\s*([01](?:\.\d{0,3})?))?\s*$")


@functools.cache
def catalogue(locale: str) -> dict[str, str]:
    """The messages of ``locale`` (read once)."""
    data: Any = json.loads((_DIR / f"{locale}.json").read_text(encoding="utf-8"))
    if not isinstance(data, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in data.items()):
        raise ValueError(f"locales/{locale}.json must be an object of strings")
    return data


def _match(tag: str) -> str | None:
    tag = tag.lower()
    if tag in _SIMPLIFIED or tag.startswith("zh-hans-"):
        return "zh-CN"
    if tag == "en" or tag.startswith("en-"):
        return "en"
    return None


def negotiate(accept_language: str | None, cookie: str | None = None) -> str:
    """The locale for a request: the cookie's choice, else the browser's preference, else :data:`DEFAULT`."""
    if cookie in LOCALES:
        return str(cookie)
    ranked: list[tuple[float, int, str]] = []
    for position, part in enumerate((accept_language or "")[:512].split(",")):
        m = _RANGE.match(part)
        if m is None:
            continue
        quality = float(m[2]) if m[2] else 1.0
        locale = _match(m[1])
        if locale is not None and quality > 0:
            ranked.append((-quality, position, locale))
    return min(ranked)[2] if ranked else DEFAULT


@dataclass(frozen=True)
class Translator:
    """Looks up messages of one locale (an id missing there falls back to English)."""

    locale: str

    def __call__(self, message: str, **values: object) -> str:
        text = catalogue(self.locale).get(message)
        if text is None:
            text = catalogue(DEFAULT)[message]
        return text.format(**values) if values else text

    def maybe(self, message: str, default: str) -> str:
        """The message, or ``default`` when neither catalogue has it (a state name from a newer relay)."""
        known = message in catalogue(self.locale) or message in catalogue(DEFAULT)
        return self(message) if known else default

    @property
    def html_lang(self) -> str:
        """The ``lang`` attribute of the page (BCP 47: ``en``, ``zh-Hans-CN``)."""
        return "zh-Hans-CN" if self.locale == "zh-CN" else "en"
