"""Test tools: the fault-injecting loopback media server, speech videos, the disk scenario.

Not part of the package: the runtime never imports them."""

from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
TRANSCRIPT_FIXTURES = REPO / "tests" / "data" / "transcripts"
