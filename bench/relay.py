"""Relay throughput: verified messages per second with one and two workers, beside a raw ``mosquitto_sub`` drain.

    .venv/bin/python -m bench.relay [--devices 2000] [--receipts 8] [--procs 2] [--db sqlite|postgresql]
                                    [--verify-threads 2]

One run, one Mosquitto (the shipped password config and ACL, each device its own user), thousands of device
connections from ``--procs`` load-generator processes (non-blocking sockets speaking the packets of
:mod:`cloud_relay.subscriber`, QoS 1, each device publishing under its own id only). Each device publishes
``--receipts`` messages of one signed receipt each and one capacity offer. The same stream is published three
times, each time as a backlog for one consumer group whose sessions were registered beforehand (clean start
off), and then drained:

* ``raw drain``: ``mosquitto_sub`` (C, no parsing, no storage) subscribed to the same shared subscription;
* ``relay 1 worker``: ``btt-relay run`` (verify every receipt with :mod:`edge.receipts.verify`, store in one
  fresh database, publish the application acks, PUBACK after the commit);
* ``relay 2 workers``: two ``btt-relay run`` processes splitting the shared subscription;
* scale-out, as deployed: one and then two workers on PostgreSQL (SQLite takes one writer at a time, so SQLite
  workers queue for its lock), each worker pinned to a core of its own with one verify thread (a worker otherwise
  keeps more than one core busy, and on a two-core machine a second one has nowhere to run). The broker, the
  PostgreSQL server and the load generator share the same cores.

Also measured: the PyNaCl verify limit (``VerifyKey.verify`` on the same receipts, one core, best of three), and
the relay's ingest core on the same stream in-process without MQTT (parse, verify, store, acks built), and the
workers' CPU time per message (all their threads; two workers on a machine with two cores share them with the
broker and the load). Relay rates are timed from the first stored message (workers started and connected) to the
last; the raw drain from ``mosquitto_sub``'s start to its exit after the last message.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import selectors
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from pathlib import Path

import nacl.signing
import psycopg

from cloud_relay.config import IngestConfig
from cloud_relay.ingest import Ingestor, UpMessage
from cloud_relay.registry import MANUFACTURER, Registry, load_trust, store_certificate
from cloud_relay.storage import Database, open_database
from cloud_relay.subscriber import DISCONNECT, PUBACK, PacketReader, connect_packet, parse_publish, publish_packet
from protocol.certificates import REQUEST, issue_certificate
from protocol.encoding import canonical_bytes, sha256_hex, signing_message
from protocol.keys import PrivateKey, generate_key, seal
from protocol.receipts import GENESIS, RECEIPT, ReceiptDraft, Use, receipt_body
from tests.mqtt_broker import RELAY_USER, MosquittoBroker

BTT_RELAY = Path(sys.executable).with_name("btt-relay")
MOSQUITTO_SUB = "/usr/bin/mosquitto_sub"
TASKSET = "/usr/bin/taskset"
PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"
RELAY_PW = "bench-relay"
TUNING = "max_inflight_messages 1000\nmax_queued_messages 0\nmax_queued_bytes 0\nmax_connections -1"


# --- the load generator: many device connections per process, packets from cloud_relay.subscriber ---------------


@dataclass
class _Conn:
    sock: socket.socket
    out: bytes
    expect: int
    reader: PacketReader
    acked: int = 0


def _publisher(port: int, devices: list[tuple[str, list[bytes]]], result: multiprocessing.Queue[float]) -> None:
    """Connect every device (one TCP connection each), publish its packets QoS 1, wait for every PUBACK."""
    conns = []
    for device, packets in devices:
        sock = socket.create_connection(("127.0.0.1", port))
        sock.sendall(connect_packet(device, username=device, password="pw"))
        connack = sock.recv(64)
        if len(connack) < 4 or connack[0] != 0x20 or connack[3] != 0:
            raise RuntimeError(f"{device}: CONNACK {connack!r}")
        sock.setblocking(False)
        conns.append(_Conn(sock, b"".join(packets), len(packets), PacketReader()))
    selector = selectors.DefaultSelector()
    for c in conns:
        selector.register(c.sock, selectors.EVENT_READ | selectors.EVENT_WRITE, c)
    start = time.perf_counter()
    pending = len(conns)
    while pending:
        for key, events in selector.select(timeout=30):
            c = key.data
            if events & selectors.EVENT_WRITE and c.out:
                sent = c.sock.send(c.out)
                c.out = c.out[sent:]
                if not c.out:
                    selector.modify(c.sock, selectors.EVENT_READ, c)
            if events & selectors.EVENT_READ:
                data = c.sock.recv(65536)
                if not data:
                    raise RuntimeError("broker closed a device connection")
                c.acked += sum(1 for packet_type, _, _ in c.reader.feed(data) if packet_type == PUBACK)
                if c.acked >= c.expect:
                    selector.unregister(c.sock)
                    pending -= 1
    elapsed = time.perf_counter() - start
    for c in conns:
        c.sock.sendall(DISCONNECT)
        c.sock.close()
    result.put(elapsed)


# --- the stream -----------------------------------------------------------------------------------------------


@dataclass
class Stream:
    manufacturer: PrivateKey
    certificates: list[dict[str, object]]
    packets: list[tuple[str, list[bytes]]]
    receipts: int
    messages: int
    verify_samples: list[tuple[bytes, bytes, bytes]]


def make_stream(devices: int, receipts: int) -> Stream:
    manufacturer = generate_key()
    certs: list[dict[str, object]] = []
    packets: list[tuple[str, list[bytes]]] = []
    samples: list[tuple[bytes, bytes, bytes]] = []
    time_ms = 1_790_000_000_000
    for d in range(devices):
        key = generate_key()
        device = f"bench-{d:06d}"
        request = seal(REQUEST, {"type": REQUEST, "format": 1, "device": device, "key": key.public.to_json()}, key)
        certs.append(issue_certificate(request, manufacturer, serial=d + 1, issued_ms=time_ms))
        prev, mine = GENESIS, []
        for seq in range(1, receipts + 1):
            body = receipt_body(
                ReceiptDraft(device=device, keyid=key.keyid, seq=seq, prev=prev, time_ms=time_ms + seq,
                             use=Use("analysis"), overage_units=1, right_id=None, study_digest=None)
            )  # fmt: skip
            envelope = seal(RECEIPT, body, key)
            prev = sha256_hex(canonical_bytes(body))
            doc = {"v": 1, "device": device, "kind": "receipts", "items": [{"id": f"r{seq}", "body": envelope}]}
            topic = f"btt/v1/dev/{device}/up/receipts"
            mine.append(publish_packet(topic, json.dumps(doc).encode(), qos=1, packet_id=seq))
            if len(samples) < 3000:
                data = canonical_bytes(body)
                samples.append(
                    (key.public.key, signing_message(RECEIPT, data), bytes.fromhex(envelope["signatures"][0]["sig"]))
                )
        offer = {"v": 1, "device": device, "kind": "offers", "items": [{"id": "o1", "body": {"gpu_ms_per_hour": 1000}}]}
        topic = f"btt/v1/dev/{device}/up/offers"
        mine.append(publish_packet(topic, json.dumps(offer).encode(), qos=1, packet_id=receipts + 1))
        packets.append((device, mine))
    return Stream(manufacturer, certs, packets, devices * receipts, devices * (receipts + 1), samples)


def publish(stream: Stream, port: int, procs: int) -> float:
    """Publish the whole stream from ``procs`` processes; returns the wall time until every PUBACK."""
    ctx = multiprocessing.get_context("fork")
    result: multiprocessing.Queue[float] = ctx.Queue()
    workers = [ctx.Process(target=_publisher, args=(port, stream.packets[i::procs], result)) for i in range(procs)]
    start = time.perf_counter()
    for w in workers:
        w.start()
    for w in workers:
        w.join()
        if w.exitcode:
            raise RuntimeError("a load-generator process failed")
    return time.perf_counter() - start


def verify_limit(samples: list[tuple[bytes, bytes, bytes]]) -> float:
    """PyNaCl ``VerifyKey.verify`` per second on one core (best of three passes over the samples)."""
    keys = {k: nacl.signing.VerifyKey(k) for k, _, _ in samples}
    best = 0.0
    for _ in range(3):
        start = time.perf_counter()
        for key, message, sig in samples:
            keys[key].verify(message, sig)
        best = max(best, len(samples) / (time.perf_counter() - start))
    return best


def _up_message(packet: bytes) -> UpMessage:
    """Topic and payload of one of our PUBLISH packets."""
    ((_, flags, body),) = PacketReader().feed(packet)
    delivery = parse_publish(flags, body)
    return UpMessage(delivery.topic, delivery.payload)


def ingest_core(stream: Stream, db_kind: str, tmp: Path, threads: int) -> float:
    """The relay's ingest (parse, verify, store, build acks) on the same stream in-process, without MQTT."""
    url, pg_name = _db_url(db_kind, tmp)
    try:
        db = _registered_db(url, stream)
        messages = [_up_message(p) for _, packets in stream.packets for p in packets]
        ingestor = Ingestor(db, verify_threads=threads)
        start = time.perf_counter()
        for i in range(0, len(messages), IngestConfig.batch_max):
            for ack in ingestor.handle(messages[i : i + IngestConfig.batch_max]):
                ack.payload()
        rate = len(messages) / (time.perf_counter() - start)
        ingestor.close()
        db.close()
        return rate
    finally:
        _drop(pg_name)


# --- consumers ------------------------------------------------------------------------------------------------


def _sub_args(port: int, group: str, client_id: str) -> list[str]:
    return [
        MOSQUITTO_SUB, "-h", "127.0.0.1", "-p", str(port), "-u", RELAY_USER, "-P", RELAY_PW, "-V", "mqttv5",
        "-q", "1", "-c", "-x", "3600", "-i", client_id, "-t", f"$share/{group}/btt/v1/dev/+/up/#",
    ]  # fmt: skip


def raw_drain(stream: Stream, broker: MosquittoBroker, procs: int) -> float:
    """Register a mosquitto_sub session, publish the backlog, then time mosquitto_sub draining it."""
    subprocess.run([*_sub_args(broker.port, "raw", "raw-1"), "-W", "1"], capture_output=True, check=False)
    publish(stream, broker.port, procs)
    start = time.perf_counter()
    subprocess.run(
        [*_sub_args(broker.port, "raw", "raw-1"), "-C", str(stream.messages)], stdout=subprocess.DEVNULL, check=True
    )
    return stream.messages / (time.perf_counter() - start)


def _db_url(kind: str, directory: Path) -> tuple[str, str | None]:
    if kind == "sqlite":
        return str(directory / f"relay-{uuid.uuid4().hex[:8]}.db"), None
    name = f"relay_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
        admin.execute(f'CREATE DATABASE "{name}"')
    return f"postgresql://postgres@127.0.0.1:5432/{name}", name


def _stored(url: str) -> int:
    db = open_database(url)
    try:
        with db.transaction() as tx:
            row = tx.one("SELECT (SELECT count(*) FROM receipts) + (SELECT count(*) FROM reports)")
        return int(row[0]) if row else 0
    finally:
        db.close()


def _worker(
    url: str, broker: MosquittoBroker, group: str, client_id: str, log: Path, threads: int, core: int | None
) -> subprocess.Popen[bytes]:
    pin = [] if core is None else [TASKSET, "-c", str(core)]  # taskset execs the worker: same pid
    with log.open("ab") as err:
        return subprocess.Popen(
            [*pin, str(BTT_RELAY), "run", "--db", url, "--mqtt", broker.url(RELAY_USER, RELAY_PW), "--group", group,
             "--client-id", client_id, "--http-port", "0", "--log-format", "json", "--verify-threads", str(threads)],
            stdout=subprocess.DEVNULL, stderr=err,
        )  # fmt: skip


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(30)


def _cpu_s(procs: list[subprocess.Popen[bytes]]) -> float:
    """CPU seconds (user + system, all threads) the processes have used so far."""
    total = 0
    for p in procs:
        fields = Path(f"/proc/{p.pid}/stat").read_text().rsplit(")", 1)[1].split()
        total += int(fields[11]) + int(fields[12])
    return total / os.sysconf("SC_CLK_TCK")


@dataclass(frozen=True)
class Drain:
    rate: float
    """Verified messages per second."""
    cpu_us: float
    """The workers' CPU time per message, all threads, in microseconds."""


def relay_drain(
    stream: Stream,
    broker: MosquittoBroker,
    procs: int,
    workers: int,
    db_kind: str,
    tmp: Path,
    threads: int,
    *,
    pinned: bool = False,
) -> Drain:
    """Fresh database; register the workers' sessions; publish the backlog; time the workers draining it.

    ``pinned``: worker ``i`` runs on core ``i`` only (the broker and the load generator run anywhere).
    """
    url, pg_name = _db_url(db_kind, tmp)
    try:
        _registered_db(url, stream).close()
        group = f"relay{workers}{'-pinned' if pinned else ''}"
        log = tmp / f"{group}.log"
        ids = [f"{group}-w{i}" for i in range(workers)]
        cores = [i % (os.cpu_count() or 1) if pinned else None for i in range(workers)]
        running = [_worker(url, broker, group, cid, log, threads, core) for cid, core in zip(ids, cores, strict=True)]
        time.sleep(3)  # sessions and subscriptions registered
        _stop(running)
        publish(stream, broker.port, procs)
        running = [_worker(url, broker, group, cid, log, threads, core) for cid, core in zip(ids, cores, strict=True)]
        deadline = time.monotonic() + 600
        first: tuple[float, int, float] | None = None
        while (count := _stored(url)) < stream.messages:
            if first is None and count:
                first = (time.perf_counter(), count, _cpu_s(running))  # the workers are up: time from here
            if time.monotonic() > deadline:
                raise RuntimeError(f"relay did not drain the backlog; see {log}")
            time.sleep(0.02)
        assert first is not None, "the backlog was drained between two polls: use a bigger stream"
        drained = stream.messages - first[1]
        drain = Drain(drained / (time.perf_counter() - first[0]), (_cpu_s(running) - first[2]) / drained * 1e6)
        _stop(running)
        return drain
    finally:
        _drop(pg_name)


def _registered_db(url: str, stream: Stream) -> Database:
    """A fresh relay database trusting the stream's manufacturer, with every device's certificate."""
    db = open_database(url)
    registry = Registry(db)
    registry.add_trust_key(MANUFACTURER, stream.manufacturer.public)
    registry.add_clinic("bench", "Bench clinic")
    with db.transaction() as tx:
        for cert in stream.certificates:
            store_certificate(tx, cert, load_trust(tx), 0)
    return db


def _drop(pg_name: str | None) -> None:
    if pg_name is not None:
        with psycopg.connect(PG_ADMIN, autocommit=True) as admin:
            admin.execute(f'DROP DATABASE IF EXISTS "{pg_name}" WITH (FORCE)')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--devices", type=int, default=2000)
    parser.add_argument("--receipts", type=int, default=8, help="receipt messages per device")
    parser.add_argument("--procs", type=int, default=2, help="load-generator processes")
    parser.add_argument("--db", choices=("sqlite", "postgresql"), default="sqlite")
    parser.add_argument("--verify-threads", type=int, default=IngestConfig.verify_threads, help="per worker")
    args = parser.parse_args()

    t0 = time.perf_counter()
    stream = make_stream(args.devices, args.receipts)
    print(
        f"relay: {args.devices} devices, {stream.messages} messages ({stream.receipts} signed receipts, "
        f"{args.devices} capacity offers), {args.procs} load processes, db={args.db}, {os.cpu_count()} cores, "
        f"{args.verify_threads} verify threads per worker"
    )
    print(f"  stream generated in {time.perf_counter() - t0:.1f} s")
    limit = verify_limit(stream.verify_samples)
    with tempfile.TemporaryDirectory(prefix="bench-relay-") as tmp_name:
        tmp = Path(tmp_name)
        users = {device: "pw" for device, _ in stream.packets} | {RELAY_USER: RELAY_PW}
        with MosquittoBroker(tmp / "broker", users=users, extra_config=TUNING) as broker:
            publish_s = publish(stream, broker.port, args.procs)  # warm-up; nobody subscribed: dropped
            raw = raw_drain(stream, broker, args.procs)
            one = relay_drain(stream, broker, args.procs, 1, args.db, tmp, args.verify_threads)
            two = relay_drain(stream, broker, args.procs, 2, args.db, tmp, args.verify_threads)
            # scale-out as deployed: PostgreSQL (SQLite has one writer at a time), a core per worker
            one_pg = relay_drain(stream, broker, args.procs, 1, "postgresql", tmp, 1, pinned=True)
            two_pg = relay_drain(stream, broker, args.procs, 2, "postgresql", tmp, 1, pinned=True)
        core = ingest_core(stream, args.db, tmp, args.verify_threads)
    print(f"  devices publishing (QoS 1)   {stream.messages / publish_s:10.0f} msg/s")
    print(f"  pynacl verify limit (1 core) {limit:10.0f} /s")
    print(f"  raw drain (mosquitto_sub)    {raw:10.0f} msg/s")
    print(f"  relay ingest core, no MQTT   {core:10.0f} msg/s")
    for label, drain in (
        (f"relay 1 worker, {args.db}", one),
        (f"relay 2 workers, {args.db}", two),
        ("relay 1 worker, PG, core 0", one_pg),
        ("relay 2 workers, PG, 0 + 1", two_pg),
    ):
        print(f"  {label:28} {drain.rate:10.0f} verified msg/s   {drain.cpu_us:5.0f} us CPU per message")
    print(f"ratio relay_1worker_vs_min_raw_or_verify_limit = {one.rate / min(raw, limit):.2f}")
    print(f"ratio relay_ingest_core_vs_verify_limit = {core / limit:.2f}")
    print(f"ratio relay_1worker_vs_raw_drain = {one.rate / raw:.2f}")
    print(f"ratio relay_2workers_vs_1worker_{args.db}_unpinned = {two.rate / one.rate:.2f}")
    print(f"ratio relay_2workers_vs_1worker = {two_pg.rate / one_pg.rate:.2f}")
    print(f"ratio relay_2workers_vs_1worker_per_cpu_second = {one_pg.cpu_us / two_pg.cpu_us:.2f}")


if __name__ == "__main__":
    main()
