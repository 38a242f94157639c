"""Benchmarks: each runs our code beside a peer in one run and ends with ``ratio <what> = <number>`` lines."""
