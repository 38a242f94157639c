"""Numbers, money, dates and shares written for a reader of one locale; pure functions, no Babel.

Amounts stay exact integers of minor units (:class:`protocol.money.Money`): a money string is built with
``divmod`` on the integer, never through a float, and the page keeps the exact minor units beside it (a
``data-minor`` attribute and the title). A currency this module has no exponent for is written as its minor units
with the code (``1234 XYZ minor units``), never guessed. Every date is UTC (the ledger's months are UTC months)
and says so.

The locales are the portal's catalogues (:data:`cloud_relay.portal.i18n.LOCALES`): ``en`` and ``zh-CN``. Both
group digits by three with ``,`` and mark decimals with ``.`` (CLDR); they differ in currency symbols, date
order and month names.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass

__all__ = ["EXPONENTS", "Formatter"]

EXPONENTS = {
    "CNY": 2, "USD": 2, "EUR": 2, "SGD": 2, "HKD": 2, "GBP": 2, "MYR": 2, "THB": 2, "IDR": 2, "VND": 0,
    "JPY": 0, "KRW": 0, "USDC": 6, "USDT": 6,
}  # fmt: skip
"""Decimal places of each currency's minor unit (ISO 4217; USDC and USDT count 6)."""

_SYMBOLS = {
    "en": {"CNY": "CN¥", "USD": "$", "EUR": "€", "GBP": "£", "JPY": "¥", "HKD": "HK$", "SGD": "SGD\u00a0"},
    "zh-CN": {"CNY": "¥", "USD": "US$", "EUR": "€", "GBP": "£", "JPY": "JP¥", "HKD": "HK$", "SGD": "SGD\u00a0"},
}
_MONTHS_EN = ("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec")
_GROUP, _DECIMAL = ",", "."


@dataclass(frozen=True)
class Formatter:
    """Formats for one locale (``en`` or ``zh-CN``)."""

    locale: str

    def number(self, value: int) -> str:
        """An integer with thousands separators: ``1,234,567``."""
        sign = "-" if value < 0 else ""
        digits = str(abs(value))
        groups = [digits[max(0, end - 3) : end] for end in range(len(digits), 0, -3)]
        return sign + _GROUP.join(reversed(groups))

    def decimal(self, minor: int, exponent: int) -> str:
        """``minor`` units with ``exponent`` decimal places, exactly: ``decimal(123456, 2) == "1,234.56"``."""
        if exponent == 0:
            return self.number(minor)
        whole, fraction = divmod(abs(minor), 10**exponent)
        sign = "-" if minor < 0 else ""
        return f"{sign}{self.number(whole)}{_DECIMAL}{fraction:0{exponent}d}"

    def money(self, amount: int, currency: str) -> str:
        """``amount`` minor units of ``currency``: ``¥1,234.56`` (zh-CN), ``CN¥1,234.56`` (en), ``1.500000 USDC``."""
        exponent = EXPONENTS.get(currency)
        if exponent is None:
            return f"{self.number(amount)} {currency} {'最小单位' if self.locale == 'zh-CN' else 'minor units'}"
        text = self.decimal(abs(amount), exponent)
        symbol = _SYMBOLS.get(self.locale, _SYMBOLS["en"]).get(currency)
        sign = "-" if amount < 0 else ""
        return f"{sign}{symbol}{text}" if symbol else f"{sign}{text}\u00a0{currency}"

    def micro(self, amount_micro: int) -> str:
        """An amount in micro-units (the capacity market's prices): ``0.000040`` for 40."""
        return self.decimal(amount_micro, 6)

    def percent_bps(self, bps: int) -> str:
        """Basis points as a percentage: 7000 -> ``70.00%``."""
        return self.decimal(bps, 2) + "%"

    def date(self, ms: int) -> str:
        """A UTC date: ``Dec 3, 2026`` / ``2026年12月3日``."""
        d = _utc(ms)
        if self.locale == "zh-CN":
            return f"{d.year}年{d.month}月{d.day}日"
        return f"{_MONTHS_EN[d.month - 1]} {d.day}, {d.year}"

    def datetime(self, ms: int) -> str:
        """A UTC date and time to the minute: ``Dec 3, 2026, 17:05 UTC`` / ``2026年12月3日 17:05 UTC``."""
        d = _utc(ms)
        sep = " " if self.locale == "zh-CN" else ", "
        return f"{self.date(ms)}{sep}{d.hour:02d}:{d.minute:02d} UTC"

    def day(self, ms: int) -> str:
        """A short UTC day for a chart axis: ``Nov 2`` / ``11月2日``."""
        d = _utc(ms)
        return f"{d.month}月{d.day}日" if self.locale == "zh-CN" else f"{_MONTHS_EN[d.month - 1]} {d.day}"

    def month(self, period: str) -> str:
        """A ledger period ``YYYY-MM``: ``Nov 2026`` / ``2026年11月``."""
        year, month = int(period[:4]), int(period[5:7])
        return f"{year}年{month}月" if self.locale == "zh-CN" else f"{_MONTHS_EN[month - 1]} {year}"

    def duration_s(self, seconds: int) -> str:
        """A lag: ``45 s``, ``12 min``, ``3 h``, ``2 d`` (``秒``, ``分钟``, ``小时``, ``天`` in zh-CN)."""
        units = (("d", "天", 86_400), ("h", "小时", 3600), ("min", "分钟", 60), ("s", "秒", 1))
        for en, zh, size in units:
            if seconds >= size or size == 1:
                count = self.number(seconds // size)
                return f"{count} {zh}" if self.locale == "zh-CN" else f"{count} {en}"
        raise AssertionError("unreachable")  # pragma: no cover


_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


def _utc(ms: int) -> dt.datetime:
    return _EPOCH + dt.timedelta(milliseconds=ms)
