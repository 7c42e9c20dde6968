"""`scribeflow metrics`: the run's figures in Prometheus' text format, where operators
already look: printed, written as a node_exporter textfile, or served on an endpoint.

Every figure comes from `status.snapshot` (the ledger and the disk), computed afresh at
each scrape or write, so nothing runs inside the workflow for it.
"""

from __future__ import annotations

import time

from prometheus_client import CollectorRegistry, generate_latest, start_http_server, write_to_textfile
from prometheus_client.core import GaugeMetricFamily

from scribeflow.config.settings import Settings
from scribeflow.ops.rates import RATE_DEFINITIONS

DISK_KINDS = ("videos", "partial", "audio", "transcripts", "tokens", "analysis", "cache", "db", "logs", "other")


class SnapshotCollector:
    """A Prometheus collector over `status.snapshot(config)`; a snapshot is reused for
    `cache_seconds` so that several scrapers do not each walk the ledger."""

    def __init__(self, config: Settings, cache_seconds: float = 5.0):
        self.config = config
        self.cache_seconds = cache_seconds
        self._cached: tuple[float, dict] | None = None

    def snapshot(self) -> dict:
        from scribeflow.ops.status import snapshot

        now = time.monotonic()
        if self._cached is None or now - self._cached[0] > self.cache_seconds:
            self._cached = (now, snapshot(self.config))
        return self._cached[1]

    def collect(self):
        s = self.snapshot()
        disk = s["disk"]
        usage = GaugeMetricFamily("scribeflow_disk_bytes", "Bytes the pipeline holds on disk, by kind",
                                  labels=["kind"])
        for kind in DISK_KINDS:
            usage.add_metric([kind], disk.get(kind, 0))
        yield usage
        yield GaugeMetricFamily("scribeflow_disk_total_bytes", "Bytes the pipeline holds on disk",
                                value=disk["total"])
        limits = GaugeMetricFamily("scribeflow_disk_limit_bytes", "The disk budget's limits", labels=["limit"])
        for name in ("hard_limit", "pause_threshold", "resume_threshold"):
            limits.add_metric([name], disk[name])
        yield limits
        pauses = s["pauses"]
        yield GaugeMetricFamily("scribeflow_downloads_paused", "1 while downloads are paused",
                                value=float(bool(pauses.get("open"))))
        yield GaugeMetricFamily("scribeflow_download_pauses", "Download pauses so far", value=pauses["count"])
        yield GaugeMetricFamily("scribeflow_download_paused_seconds", "Time downloads have been paused",
                                value=pauses["total_seconds"])
        stages = GaugeMetricFamily("scribeflow_episodes", "Episodes per stage (not_started: not yet in the ledger)",
                                   labels=["stage"])
        for stage, n in s["stages"].items():
            stages.add_metric([stage], n)
        stages.add_metric(["not_started"], s.get("not_started", 0))
        yield stages
        sources = GaugeMetricFamily("scribeflow_transcripts", "Transcripts by source (subtitles_planned: planned "
                                    "from subtitles, not made yet)", labels=["source"])
        for source, n in (s.get("sources") or {}).items():
            sources.add_metric([source], n)
        yield sources
        sample = s.get("sampled_asr") or {}
        if sample.get("cer") is not None:
            yield GaugeMetricFamily("scribeflow_sampled_asr_cer", "The ASR's character error rate against the "
                                    "subtitles of the sampled episodes (subtitles.sample_share)", value=sample["cer"])
        yield GaugeMetricFamily("scribeflow_catalogue_episodes", "Episodes in the catalogue",
                                value=s["catalogue_episodes"])
        rates = GaugeMetricFamily("scribeflow_episodes_per_hour", "Episodes through a stage per hour; window: "
                                  + "; ".join(f"{k}: {v}" for k, v in RATE_DEFINITIONS.items()),
                                  labels=["stage", "window"])
        for key, stage in (("downloads_per_hour", "download"), ("extractions_per_hour", "extract_audio"),
                           ("transcriptions_per_hour", "transcribe")):
            for window, value in (s["rates"].get(key) or {}).items():
                if isinstance(value, (int, float)):
                    rates.add_metric([stage, window], value)
        yield rates
        hosts = GaugeMetricFamily("scribeflow_host_paused_since_seconds",
                                  "Paused hosts (circuit breaker): when each was paused (Unix time)", labels=["host"])
        for host, h in (s.get("hosts_paused") or {}).items():
            hosts.add_metric([host], h["since"])
        yield hosts
        failures = s["failures"]
        failed = GaugeMetricFamily("scribeflow_failed_episodes", "Failed episodes", labels=["given_up"])
        given = sum(1 for f in failures if f.get("given_up"))
        failed.add_metric(["true"], given)
        failed.add_metric(["false"], len(failures) - given)
        yield failed
        eta = s["eta"]
        yield GaugeMetricFamily("scribeflow_remaining_episodes", "Episodes left to transcribe",
                                value=eta["remaining_episodes"])
        if eta.get("seconds") is not None:
            yield GaugeMetricFamily("scribeflow_eta_seconds", "Time left at the current rate", value=eta["seconds"])


def registry(config: Settings) -> CollectorRegistry:
    reg = CollectorRegistry()
    reg.register(SnapshotCollector(config))
    return reg


def text(config: Settings) -> str:
    return generate_latest(registry(config)).decode()


def write_textfile(config: Settings, path: str) -> None:
    """For node_exporter's textfile collector: written to a temporary file, then renamed."""
    write_to_textfile(path, registry(config))


def serve(config: Settings, port: int, address: str = "127.0.0.1"):
    """An endpoint at http://ADDRESS:PORT/metrics; returns (server, thread)."""
    return start_http_server(port, addr=address, registry=registry(config))
