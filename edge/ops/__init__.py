"""Operations: ``health`` (the agent's health as typed checks, one model for doctor, ``/healthz``, the metrics and
the TUI), ``metrics`` (the Prometheus ``/metrics`` and ``/healthz`` endpoint of the agent) and ``doctor`` (the
checks behind ``btt-edge doctor``: what is wrong with this box and how to fix it)."""
