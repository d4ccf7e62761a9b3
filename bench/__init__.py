"""Benchmarks of the swarm service against the simulator: makespan vs a lower bound,
baselines in the same run, overhead, scale, rate limits and the API under load.

Run from the repository root: ``python -m bench.run [--quick]`` (or ``make bench``)."""
