"""The relay side of sharing spare capacity (README "Sharing spare capacity").

* :mod:`cloud_relay.capacity.market` — matching, spot-check sampling, comparison, payouts (pure).
* :mod:`cloud_relay.capacity.coordinator` — the registry of offers, jobs, assignments and payouts in the relay
  database; verification of device messages; timeouts and reassignment.
* :mod:`cloud_relay.capacity.link` — the coordinator on MQTT (offers and results in, jobs out).
* :mod:`cloud_relay.capacity.api` — the HTTP routes: blobs, submit a job, collect results, offers, payouts.
"""

from cloud_relay.capacity.coordinator import Coordinator
from cloud_relay.capacity.link import CapacityLink

__all__ = ["CapacityLink", "Coordinator"]
