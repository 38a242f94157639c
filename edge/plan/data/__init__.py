"""The planner's shipped tables (package data, not code): ``rules.toml`` and the code sets in ``codes/``."""
