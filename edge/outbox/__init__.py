"""The durable outbox in the agent database: what the box owes the relay, until the relay acknowledges it."""

from edge.outbox.feed import certificate_item, feed
from edge.outbox.kinds import ACCOUNTING, KINDS, OutboxKind
from edge.outbox.outbox import Item, Outbox, Rejection, Settled

__all__ = ["ACCOUNTING", "KINDS", "Item", "Outbox", "OutboxKind", "Rejection", "Settled", "certificate_item", "feed"]
