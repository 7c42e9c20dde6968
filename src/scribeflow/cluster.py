"""What a cluster scheduler is asked for: the transcription's wall time.

Slurm kills a job at its time limit, and a too-generous limit keeps jobs out of the
backfill scheduler, so the limit follows the episode's length where the catalogue
knows it. The figures are deliberately loose: a GPU transcribes large-v3 at 10-50x
real time, but the job also re-parses the Snakefile and loads the model first.
"""

from __future__ import annotations

import math

# Snakefile parse (the whole catalogue), model load, writing the outputs.
FIXED_MINUTES = 15
# Wall minutes allowed per minute of audio: 2x real time, for a slow or shared GPU.
MINUTES_PER_AUDIO_MINUTE = 0.5
# When the catalogue has no duration_s: enough for a two-hour film at the rate above.
UNKNOWN_DURATION_MINUTES = 120


def transcribe_runtime_minutes(duration_s: float | None, attempt: int = 1) -> int:
    """Time limit in minutes for transcribing one episode; doubled on each retry."""
    if duration_s is None or not duration_s > 0:  # None, NaN or 0: unknown
        audio_minutes = UNKNOWN_DURATION_MINUTES
    else:
        audio_minutes = duration_s / 60
    return math.ceil((FIXED_MINUTES + MINUTES_PER_AUDIO_MINUTE * audio_minutes) * attempt)
