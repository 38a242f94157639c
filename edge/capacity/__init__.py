"""Sharing the box's spare accelerator with the network (README "Sharing spare capacity").

* :mod:`edge.capacity.probe` — what the box has: accelerator (NVML, tegrastats, CPU), memory, load, a measured
  throughput score.
* :mod:`edge.capacity.policy` — the clinic's rules: opening hours, idle time, load and memory caps (pure).
* :mod:`edge.capacity.messages` — signed offers, withdrawals, jobs and results (pure).
* :mod:`edge.capacity.fetch` — job bundles and batches fetched by hash into a verified cache.
* :mod:`edge.capacity.runner` / :mod:`edge.capacity.jobrun` — the limited, pausable, killable job worker process.
* :mod:`edge.capacity.state` — durable state (switch, offers, jobs) in ``edge.db``.
* :mod:`edge.capacity.service` — the service tying them together; clinical work always pre-empts.
"""

from edge.capacity.service import CapacityService, ClinicalActivity, IndexActivity

__all__ = ["CapacityService", "ClinicalActivity", "IndexActivity"]
