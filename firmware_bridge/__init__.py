"""Serial link to the X-ray unit's controller: framing, messages, transport, drivers and a unit simulator."""
