"""Cluster runs: what the scheduler is asked for (the transcription's wall time), and
whether the shared filesystem's locks reach every node.

Slurm kills a job at its time limit, and a too-generous limit keeps jobs out of the
backfill scheduler, so the limit follows the episode's length where the catalogue
knows it. The figures are deliberately loose: a GPU transcribes large-v3 at 10-50x
real time, but the job also re-parses the Snakefile and loads the model first.
"""

from __future__ import annotations

import math
import os
from pathlib import Path

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


# -- shared-filesystem locks ------------------------------------------------------------
# On a cluster the disk gate (lockf on {data_dir}/gate/gate.lock) and the SQLite ledger
# ({data_dir}/jobs.db, rollback journal) are shared by jobs on many nodes: both need POSIX
# byte-range locks that the file server enforces across clients. These mount options
# keep them on one node (each node would then admit downloads on its own), or skip the
# revalidation that makes what one node wrote under the lock visible to the next.
# nocto: an open() no longer revalidates the file, so the gate could read a stale state.
LOCAL_ONLY_LOCKS = {
    "nfs": ("nolock", "local_lock=posix", "local_lock=all", "nocto"),
    "nfs4": ("nolock", "local_lock=posix", "local_lock=all", "nocto"),
    "lustre": ("localflock", "noflock"),
    "cifs": ("nobrl",),
    "smb3": ("nobrl",),
}


def mount_of(path: str | os.PathLike, partitions=None) -> tuple[str, str, set[str]]:
    """(mount point, filesystem type, options) of the mount holding `path`: the deepest of
    psutil's partitions (every mount, as the kernel lists them) that contains it."""
    if partitions is None:
        import psutil

        partitions = psutil.disk_partitions(all=True)
    target = Path(os.path.realpath(path))
    best = ("/", "", set())
    for part in partitions:
        point = Path(part.mountpoint)
        if (target == point or point in target.parents) and len(part.mountpoint) >= len(best[0]):
            best = (part.mountpoint, part.fstype, set(part.opts.split(",")))
    return best


def local_lock_problem(path: str | os.PathLike, partitions=None) -> str | None:
    """Why locked state under `path` would not be shared reliably between nodes, or None.
    `partitions`: psutil.disk_partitions(all=True)'s rows (by default, this machine's)."""
    try:
        point, fstype, options = mount_of(path, partitions)
    except OSError:
        return None  # not Linux: nothing to tell
    bad = [o for o in LOCAL_ONLY_LOCKS.get(fstype, ()) if o in options]
    if not bad:
        return None
    return (f"{path} is on {fstype} mounted at {point} with {', '.join(bad)}: jobs on different "
            "nodes would not reliably share the disk gate's and the ledger's locked state, and "
            "could exceed the disk budget. Put data_dir on a filesystem with shared "
            "POSIX locks (NFS with locking, Lustre with flock, GPFS), or run on one machine.")
