"""Operations: ``metrics`` (the Prometheus ``/metrics`` and ``/healthz`` endpoint of the agent) and ``doctor`` (the
checks behind ``btt-edge doctor``: what is wrong with this box and how to fix it)."""
