"""Test tools: the fault-injecting loopback media server, speech videos, the disk scenario.

Not part of the package: the runtime never imports them."""
