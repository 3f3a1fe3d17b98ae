"""Latency and memory benchmarks, run with ``python -m bench.<task>`` (``make bench``).

Results are written as JSON to ``bench/results/`` (not versioned: they describe one machine).
"""
