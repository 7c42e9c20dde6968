"""What sbatch is asked for under profiles/slurm, without a cluster: Snakemake evaluates the
profile's resources in a dry run, and the Slurm plugin's own code turns them into the
sbatch options. A profile that loses the GPU request, the memory or the time limit fails
here even on a machine without Slurm or a GPU."""

import re
from types import SimpleNamespace

import pytest
from conftest import REPO, run_snakemake, workflow_config, write_catalogue
from support.models import packaged_model

from scribeflow.integration.cluster import transcribe_runtime_minutes

submit_string = pytest.importorskip("snakemake_executor_plugin_slurm.submit_string")
slurm_utils = pytest.importorskip("snakemake_executor_plugin_slurm.utils")

SETTINGS = ("SCRIBEFLOW_SLURM_PARTITION", "SCRIBEFLOW_SLURM_GPU_PARTITION",
            "SCRIBEFLOW_SLURM_ACCOUNT", "SCRIBEFLOW_SLURM_GPU_MODEL")


class Resources(dict):
    """Job resources as the plugin reads them: res.get("x") and res.x."""

    def __getattr__(self, name):
        return self[name]


def planned_jobs(tmp_path, **env) -> dict[tuple[str, str], SimpleNamespace]:
    """(rule, episode) -> job with the resources a dry run with profiles/slurm evaluates."""
    rows = [{"id": "long", "url": "http://127.0.0.1:9/a.mp4", "duration_s": 1440},
            {"id": "unknown", "url": "http://127.0.0.1:9/b.mp4"}]
    catalogue = write_catalogue(tmp_path / "episodes.csv", rows)
    # A model this machine has: a name it would have to download is refused by -n here (no hub).
    config = workflow_config(tmp_path, catalogue, str(packaged_model("tiny.en")))
    proc = run_snakemake(tmp_path, config, "-n", "--profile", str(REPO / "profiles" / "slurm"), timeout=120)
    jobs = {}
    for block in re.split(r"\n(?=(?:local)?rule \w+:)", proc.stdout):
        rule = re.match(r"(?:local)?rule (\w+):", block)
        episode = re.search(r"^\s+wildcards: episode=(\S+)$", block, re.M)
        resources = re.search(r"^\s+resources: (.*)$", block, re.M)
        if not (rule and episode and resources):
            continue
        res = Resources()
        for item in resources[1].split(", "):
            name, _, value = item.partition("=")
            res[name] = int(value) if value.isdigit() else value
        threads = re.search(r"^\s+threads: (\d+)$", block, re.M)
        jobs[rule[1], episode[1]] = SimpleNamespace(name=rule[1], resources=res,
                                                    threads=int(threads[1]) if threads else 1)
    assert {r for r, _ in jobs} == {"download", "extract_audio", "transcribe", "analyse_episode"}, \
        proc.stdout[-3000:]
    return jobs


def sbatch_options(job) -> str:
    """The sbatch command line the plugin builds for this job (partition/account left out)."""
    params = {"run_uuid": "run", "slurm_logfile": "log", "comment_str": f"rule_{job.name}",
              "account": "", "partition": "", "workdir": "/work"}
    return submit_string.get_submit_command(job, params) + slurm_utils.set_gres_string(job)


def test_sbatch_requests_of_each_rule(tmp_path, monkeypatch):
    monkeypatch.setenv("SCRIBEFLOW_SLURM_PARTITION", "short")
    monkeypatch.setenv("SCRIBEFLOW_SLURM_GPU_PARTITION", "gpu-a100")
    monkeypatch.setenv("SCRIBEFLOW_SLURM_ACCOUNT", "lab42")
    monkeypatch.setenv("SCRIBEFLOW_SLURM_GPU_MODEL", "a100")
    jobs = planned_jobs(tmp_path)

    for episode, minutes in (("long", 27), ("unknown", 75)):
        job = jobs["transcribe", episode]
        assert minutes == transcribe_runtime_minutes(1440 if episode == "long" else None)
        options = sbatch_options(job)
        assert "--gpus=a100:1" in options and job.resources.gpu == 1, options
        assert f" -t {minutes} " in options and " --mem 16000 " in options, options
        assert "--cpus-per-task=4" in options, options
        assert (job.resources.slurm_partition, job.resources.slurm_account) == ("gpu-a100", "lab42")

    for rule, mem, minutes in (("download", 2000, 120), ("extract_audio", 3000, 60),
                               ("analyse_episode", 2000, 60)):
        job = jobs[rule, "long"]
        options = sbatch_options(job)
        assert "--gpus" not in options and "gpu" not in job.resources, options
        assert f" -t {minutes} " in options and f" --mem {mem} " in options, options
        assert "--cpus-per-task=1" in options, options
        assert (job.resources.slurm_partition, job.resources.slurm_account) == ("short", "lab42")


def test_unset_site_settings_leave_the_choice_to_the_cluster(tmp_path, monkeypatch):
    for name in SETTINGS:
        monkeypatch.delenv(name, raising=False)
    jobs = planned_jobs(tmp_path)
    # Empty values: the plugin then uses the cluster's default partition, guesses the
    # account, and asks for any GPU.
    for (rule, _), job in jobs.items():
        assert job.resources.slurm_partition == "" and job.resources.slurm_account == "", (rule, job.resources)
    assert "--gpus=1" in sbatch_options(jobs["transcribe", "long"]).split()


def test_transcription_time_limit_follows_the_episode_length():
    assert transcribe_runtime_minutes(24 * 60) == 27  # 15 fixed + half the audio time
    assert transcribe_runtime_minutes(3 * 3600) == 105
    # Unknown (missing, NaN, 0): room for a two-hour film.
    assert transcribe_runtime_minutes(None) == transcribe_runtime_minutes(float("nan")) == 75
    assert transcribe_runtime_minutes(0) == 75
    # A job killed at its limit is retried (profiles/slurm: retries) with twice the time.
    assert transcribe_runtime_minutes(24 * 60, attempt=2) == 54


# As psutil.disk_partitions(all=True) gives them (it reads the kernel's mount table; a space
# in a mount point arrives unescaped).
MOUNTS = [SimpleNamespace(**dict(zip(("device", "mountpoint", "fstype", "opts"), row))) for row in [
    ("/dev/root", "/", "ext4", "rw,relatime"),
    ("fs:/export", "/shared", "nfs4", "rw,relatime,vers=4.2,local_lock=none,addr=10.0.0.1"),
    ("fs:/scratch", "/scratch nolock", "nfs", "rw,relatime,vers=3,nolock,addr=10.0.0.1"),
    ("mds@o2ib:/fs", "/lustre", "lustre", "rw,localflock"),
    ("fs:/p", "/shared/posix", "nfs4", "rw,vers=4.1,local_lock=posix"),
    ("fs:/f", "/fast", "nfs4", "rw,vers=4.2,nocto,local_lock=none"),
]]


@pytest.mark.parametrize("path, problem", [
    ("/shared/data", None),                      # NFSv4, server-side locks
    ("/home/me/data", None),                     # local disk
    ("/scratch nolock/data", "nolock"),          # NFSv3 without lockd: locks stay on the node
    ("/lustre/project/data", "localflock"),
    ("/shared/posix/data", "local_lock=posix"),  # the nested mount wins over /shared
    ("/fast/data", "nocto"),                     # open() would not revalidate the gate's state
])
def test_cluster_runs_refuse_node_local_locks(path, problem):
    from scribeflow.integration.cluster import local_lock_problem

    message = local_lock_problem(path, MOUNTS)
    if problem is None:
        assert message is None
    else:
        assert problem in message and path in message and "disk budget" in message


def test_the_mount_of_a_path_on_this_machine_is_found():
    from scribeflow.integration.cluster import mount_of

    point, fstype, options = mount_of("/proc/self")
    assert (point, fstype) == ("/proc", "proc") and options
