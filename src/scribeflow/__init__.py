"""scribeflow: download, transcribe and analyse huge video catalogues within a disk budget."""

__version__ = "0.1.0"


def child_env(env=None) -> dict:
    """The environment for a Python child process (`python -m scribeflow...`) that must run
    this very package: the folder it was imported from goes first on PYTHONPATH. From a
    checkout that is src/, which only this process's sys.path holds (Snakemake appends it
    to a job's, and drops PYTHONPATH in conda environments)."""
    import os
    from pathlib import Path

    env = dict(os.environ if env is None else env)
    root = str(Path(__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [root, env.get("PYTHONPATH")]))
    return env
