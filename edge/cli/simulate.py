"""``btt-edge simulate-unit --pty``: a virtual X-ray unit on a pty; prints the path to give ``run --serial``.

Runs until SIGTERM or SIGINT. Scriptable: an exposure every N seconds, faults, line noise, a pulled cable,
and a C-STORE of each exposure's image to the agent (``--send-to AE@HOST:PORT``).
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

__all__ = ["register"]


def register(sub: Any) -> None:
    """Add the ``simulate-unit`` command."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "simulate-unit", help="run a virtual X-ray unit on a pty (prints its path)"
    )
    parser.add_argument("--pty", action="store_true", required=True, help="serve the protocol on a new pty")
    parser.add_argument("--link", type=Path, metavar="PATH", help="keep a symlink to the current pty here")
    parser.add_argument("--exposure-interval", type=float, default=0.0, metavar="S", help="expose every S s")
    parser.add_argument("--exposure-time", type=float, default=0.3, metavar="S", help="beam-on time")
    parser.add_argument("--program", default="panoramic", choices=("panoramic", "ceph", "intraoral", "cbct"))
    parser.add_argument("--fault-interval", type=float, default=0.0, metavar="S", help="raise a fault every S s")
    parser.add_argument("--fault-duration", type=float, default=3.0, metavar="S")
    parser.add_argument("--noise", type=float, default=0.0, metavar="RATE", help="probability a sent byte is garbled")
    parser.add_argument("--unplug-interval", type=float, default=0.0, metavar="S", help="pull the cable every S s")
    parser.add_argument("--unplug-duration", type=float, default=2.0, metavar="S")
    parser.add_argument("--serial-number", default="SIM-0001", help="the unit's serial (DeviceSerialNumber)")
    parser.add_argument("--protocol-version", type=int, default=None, metavar="N", help="newest version spoken")
    parser.add_argument("--send-to", metavar="AE@HOST:PORT", help="C-STORE each exposure's image there")
    parser.add_argument(
        "--state", type=Path, metavar="FILE", help="keep the exposure log here across restarts (ids never repeat)"
    )
    parser.add_argument("--seed", type=int, default=None)
    parser.set_defaults(func=_run)


def _run(args: argparse.Namespace) -> int:
    import signal
    import threading

    from edge.errors import ConfigError
    from edge.unit.simulator import ImageSender, PtyTransport, SimulatorScript, UnitSimulator
    from firmware_bridge.errors import BridgeError
    from firmware_bridge.messages import PROTOCOL_VERSION
    from runtime.logs import configure_logging

    configure_logging("text", "INFO")
    script = SimulatorScript(
        exposure_interval_s=args.exposure_interval,
        exposure_time_s=args.exposure_time,
        program=args.program,
        fault_interval_s=args.fault_interval,
        fault_duration_s=args.fault_duration,
        noise_rate=args.noise,
        unplug_interval_s=args.unplug_interval,
        unplug_duration_s=args.unplug_duration,
        seed=args.seed,
    )
    try:
        transport = PtyTransport(link=args.link)
        simulator = UnitSimulator(
            transport,
            serial=args.serial_number,
            script=script,
            max_version=args.protocol_version or PROTOCOL_VERSION,
            image_sender=ImageSender.parse(args.send_to) if args.send_to else None,
            state_path=args.state,
        )
        transport.open()
    except BridgeError as exc:
        raise ConfigError(str(exc)) from exc
    stop = threading.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: stop.set())
    simulator.start()
    print(transport.port, flush=True)
    try:
        stop.wait()
    finally:
        simulator.stop()
    return 0
