"""``python -m bench.ledger``: measure on anvil, print the figures, the month on paper and the ratios."""

from __future__ import annotations

import argparse
import os
import textwrap
from pathlib import Path

from bench.ledger import __doc__ as DOC
from bench.ledger.measure import BATCH_SIZES, TX_GAS_CAP, Measured, measure
from bench.ledger.paper import (
    CHAINS,
    DAYS,
    DEVICES,
    RECEIPTS_PER_DAY,
    month,
    settlements_per_device_month,
)
from edge.config import ReceiptsConfig

HEADING = "## Ledger"


WIDTH = 116


def _para(*parts: str) -> str:
    """One paragraph of the section, wrapped as docs/scaling.md is."""
    return textwrap.fill(" ".join(parts), WIDTH, break_on_hyphens=False, break_long_words=False)


def _bullet(*parts: str) -> str:
    return textwrap.fill(" ".join(parts), WIDTH, initial_indent="* ", subsequent_indent="  ", break_on_hyphens=False)


def _gas(value: float) -> str:
    for unit, scale in (("T", 1e12), ("G", 1e9), ("M", 1e6), ("k", 1e3)):
        if value >= scale:
            return f"{value / scale:.3g} {unit}"
    return f"{value:.0f}"


def _time(hours: float) -> str:
    if hours < 1 / 60:
        return f"{hours * 3600:.0f} s"
    if hours < 1:
        return f"{hours * 60:.0f} min"
    if hours < 48:
        return f"{hours:.1f} h"
    return f"{hours / 24:.0f} d"


def _single(m: Measured) -> float:
    return sum(m.single_gas.values()) / len(m.single_gas)


def measured_section(m: Measured, command: str, machine: str) -> str:
    k = m.settlements_per_tx
    table = [
        "| per receipt, N receipts per settlement | gas | transactions |",
        "|---|---|---|",
    ]
    for n in BATCH_SIZES:
        table.append(f"| N = {n:,}: anchorMany of {k} settlements | {m.many_gas[n] / (k * n):.2f} | 1 / {k * n:,} |")
        table.append(f"| N = {n:,}: one settlement per tx (anchor) | {m.single_gas[n] / n:.2f} | 1 / {n:,} |")
    table.append(f"| naive: each receipt posted (NaiveReceiptLog.post) | {m.naive_gas:,.0f} | 1 |")
    roots = ", ".join(f"{m.root_s[n] * 1000:.1f} ms" for n in BATCH_SIZES)
    return "\n\n".join(
        [
            _para(
                f"`{command}` against {m.client.replace('/v', ' ')} (hardfork {m.hardfork},",
                f"block gas limit {m.block_gas_limit:,},",
                f"EIP-7825's per-transaction cap of {TX_GAS_CAP:,} gas enforced), the committed artefacts of",
                "`SettlementAnchor` and `NaiveReceiptLog`. Gas is each mined transaction's `gasUsed` (the 21,000",
                "intrinsic gas and the calldata included). The naive peer's gas per receipt is the mean of",
                f"{m.naive_sample} `post` transactions, extrapolated to any N: each post writes one new slot, so",
                "its cost per receipt is flat.",
            ),
            "\n".join(table),
            _para(
                f"Per transaction: `anchor` {_single(m):,.0f} gas; `anchorMany` {m.many_fixed_gas:,.0f} +",
                f"{m.per_settlement_gas:,.0f} per settlement (two new storage slots and an event each), whatever",
                "N is: a root is 32 bytes however many receipts it covers. One transaction holds at most",
                f"{m.max_settlements_per_tx} settlements under the cap (measured: {m.max_tx_gas:,} gas). Building",
                f"a settlement's root in Python (`protocol.merkle`) takes {roots} for N = 100, 1,000, 10,000; a",
                "receipt's inclusion proof is checked against the root read back from the contract.",
            ),
            _para(
                f"On anvil ({machine}; automine, one transaction after another from one unlocked account,",
                "loopback), median",
                f"send-to-receipt latency: `anchor` {m.latency_ms['anchor']:.1f} ms, `post`",
                f"{m.latency_ms['post']:.1f} ms, `anchorMany` of {k} {m.latency_ms['anchorMany']:.0f} ms, of",
                f"{m.max_settlements_per_tx} {m.latency_ms['anchorMany full']:.0f} ms; throughput `anchor`",
                f"{m.throughput_tps['anchor']:.0f} tx/s, `post` {m.throughput_tps['post']:.0f} tx/s, `post` sent",
                f"without waiting for each receipt {m.throughput_tps['post pipelined']:.0f} tx/s. These are",
                "the node's and the client's costs only: on a real chain a transaction waits for the next block",
                "(up to one block time) and then the relay's confirmations, so its latency is about block time x",
                "(1 + confirmations), and the throughput that counts is the chain's gas per second, below.",
            ),
        ]
    )


def paper_section(m: Measured) -> str:
    cfg = ReceiptsConfig()
    per_device = settlements_per_device_month(cfg)
    parts = [
        _para(
            f"Assumptions: a month is {DAYS} days; each device records {RECEIPTS_PER_DAY} receipts a day",
            "(\"Traffic per device\" above, generous for the roadmap's volumes). The box's settlement defaults",
            f"(`edge/config.py`, `[receipts]`: `settle_interval_s` = {cfg.settle_interval_s:.0f},",
            f"`settle_max_receipts` = {cfg.settle_max_receipts:,}) close a settlement at most once an hour that",
            f"has receipts, so a device closes at most {per_device} settlements a month (24 a day) of about",
            f"{RECEIPTS_PER_DAY * DAYS / per_device:.1f} receipts each; a unit used only in clinic hours closes",
            f"about 10 a day (scale those rows by 300 / {per_device}). The rows with N receipts per settlement",
            "assume the box settled every N receipts instead (N = 1,000 is one settlement every",
            f"{1000 / RECEIPTS_PER_DAY:.0f} days at {RECEIPTS_PER_DAY} a day; N = 10,000 is more than a device's",
            "month and stands for a relay-level root over many devices' receipts). The period root: every hour",
            "the relay anchors with `anchor` one RFC 9162 root over that hour's settlement roots (a receipt then",
            "checks with two proofs, receipt to settlement root to period root); the relay does not do this",
            "today. Chains: mainnet-like with a 30 M or 36 M block gas limit and 12 s blocks, an L2 with 30 M and",
            "2 s. Time is the span of blocks the month's anchoring fills were every block ours (gas / block gas",
            "limit x block time), with its share of the chain's block space in a month; both scale linearly with",
            "the gas limit and the receipts per day.",
        )
    ]
    for devices in DEVICES:
        rows = month(devices, m, cfg)
        table = [
            "| anchoring | tx / month | gas / month | " + " | ".join(c.name for c in CHAINS) + " |",
            "|---|---|---|" + "---|" * len(CHAINS),
        ]
        for row in rows:
            cells = [f"{_time(row.hours(c))} ({100 * row.share(c):.3g} %)" for c in CHAINS]
            table.append(f"| {row.scenario} | {row.txs:,} | {_gas(row.gas)} | " + " | ".join(cells) + " |")
        parts.append(
            f"**{devices:,} devices**: {devices * RECEIPTS_PER_DAY * DAYS:,} receipts and "
            f"{devices * per_device:,} settlements a month at the defaults."
        )
        parts.append("\n".join(table))
    return "\n\n".join(parts)


def conclusions(m: Measured) -> str:
    cfg = ReceiptsConfig()
    small, big = (month(devices, m, cfg) for devices in DEVICES)
    mainnet, l2 = CHAINS[1], CHAINS[2]
    per_device = settlements_per_device_month(cfg)
    rate = max(m.throughput_tps.values())
    return "\n".join(
        [
            _bullet(
                f"At the box's defaults a settlement covers about {RECEIPTS_PER_DAY * DAYS / per_device:.1f}",
                f"receipts, so anchoring each settlement costs {small[1].gas / small[0].gas:.2f} (one per tx) or",
                f"{small[2].gas / small[0].gas:.2f} (anchorMany) of the gas of posting every receipt: Merkle",
                "anchoring per settlement pays only once settlements cover many receipts. For 15,000 devices",
                f"the defaults with anchorMany take {100 * small[2].share(mainnet):.2g} % of a {mainnet.name}",
                f"chain's month; for 500,000 devices {100 * big[2].share(mainnet):.0f} % (it does not fit) and",
                f"{100 * big[2].share(l2):.0f} % of an {l2.name} chain's.",
            ),
            _bullet(
                "One transaction per settlement, as the relay's chain module sends them, is also a sending",
                f"problem: at the best {rate:.0f} tx/s measured here from one sender, 15,000 devices' month is",
                f"{_time(small[1].txs / rate / 3600)} of sending and 500,000 devices'",
                f"{_time(big[1].txs / rate / 3600)}, before any block space is found for it.",
            ),
            _bullet(
                f"One period root an hour costs {_gas(big[-1].gas)} gas and {big[-1].txs} transactions a month",
                f"whatever the number of devices ({100 * big[-1].share(mainnet):.1g} % of {mainnet.name}): that,",
                "or settlements of thousands of receipts packed with anchorMany, is the way to anchor 500,000",
                "devices.",
            ),
        ]
    )


def ratios(m: Measured) -> list[str]:
    k = m.settlements_per_tx
    out = []
    for n in BATCH_SIZES:
        label = f"batch{n}"
        out.append(f"ratio gas_per_receipt_{label} = {m.naive_gas * n * k / m.many_gas[n]:.1f}")
        out.append(f"ratio gas_per_receipt_{label}_one_per_tx = {m.naive_gas * n / m.single_gas[n]:.1f}")
        out.append(f"ratio tx_per_receipt_{label} = {n * k}")
        out.append(f"ratio tx_per_receipt_{label}_one_per_tx = {n}")
    small = month(DEVICES[0], m, ReceiptsConfig())
    out.append(f"ratio gas_per_receipt_box_defaults = {small[0].gas / small[2].gas:.2f}")
    out.append(f"ratio gas_per_receipt_box_defaults_one_per_tx = {small[0].gas / small[1].gas:.2f}")
    return out


def section(m: Measured, command: str, machine: str) -> str:
    intro = _para(
        "Settlements anchored on an Ethereum-compatible chain (issue 19, `cloud_relay/chain`, `bench/ledger`):",
        "gas and transactions per receipt with Merkle anchoring against posting every receipt (the naive peer),",
        "measured on a real node, then a month of anchoring for 15,000 and 500,000 devices on paper from the",
        "measured per-transaction gas.",
    )
    return "\n\n".join(
        [
            HEADING,
            intro,
            measured_section(m, command, machine),
            "### A month on paper",
            paper_section(m),
            conclusions(m),
        ]
    )


def write_section(doc: Path, text: str) -> None:
    """Replace ``doc``'s section "Ledger" (to the next level-2 heading or the end) with ``text``, or append it."""
    current = doc.read_text(encoding="utf-8")
    start = current.find("\n" + HEADING + "\n")
    if start < 0:
        doc.write_text(current.rstrip("\n") + "\n\n" + text + "\n", encoding="utf-8")
        return
    end = current.find("\n## ", start + 1)
    tail = current[end:] if end >= 0 else "\n"
    doc.write_text(current[: start + 1] + text + "\n" + tail, encoding="utf-8")


def main() -> None:
    parser = argparse.ArgumentParser(description=DOC, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--settlements", type=int, default=100, help="settlements per anchorMany transaction")
    parser.add_argument("--naive-sample", type=int, default=200, help="receipts posted one per tx by the peer")
    parser.add_argument("--singles", type=int, default=20, help="anchor() transactions per batch size")
    parser.add_argument("--doc", type=Path, help="rewrite this file's section 'Ledger' (docs/scaling.md)")
    args = parser.parse_args()
    if args.settlements < 2:
        parser.error("--settlements must be at least 2 (the fit needs two points)")
    load = os.getloadavg()[0]
    machine = f"{os.cpu_count()} cores, load average {load:.1f} at the start"
    m = measure(args.settlements, args.naive_sample, args.singles)
    command = ".venv/bin/python -m bench.ledger"
    text = section(m, command, machine)
    print(text)
    print()
    for line in ratios(m):
        print(line)
    if args.doc is not None:
        write_section(args.doc, text)


if __name__ == "__main__":
    main()
