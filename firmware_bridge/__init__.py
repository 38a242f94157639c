"""Serial link to the X-ray unit's controller.

The layers, bottom up (the protocol is documented in ``docs/serial-protocol.md``):

* ``transport``: bytes to and from the port (pyserial, or an in-memory fake);
* ``framing``: COBS frames with a CRC-32 (pure);
* ``messages``: the messages and their versioned TLV encoding (pure);
* ``link``: sequence numbers, ACK/NAK, retransmission, duplicate suppression, the version handshake;
* ``driver``: the interface the agent uses, and the reference driver for this protocol.

Errors are in ``errors``. Nothing here can command or block an exposure. The virtual unit that speaks this
protocol over a pty (``btt-edge simulate-unit``, the tests) is :mod:`edge.unit.simulator`: it makes its images with
the synthetic generator, which the bridge has no business importing.
"""
