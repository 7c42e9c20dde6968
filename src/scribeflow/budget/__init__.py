"""The disk promise: measuring what the data takes (monitor.py), admitting downloads and
extractions under the limits (gate.py, over statefile.py), a download's own bytes watched
as they land (watchdog.py), slots for concurrent work (slots.py), per-host limits and the
circuit breaker (hosts.py), and removing what an interrupted run left (cleanup.py)."""
