"""Where the workflow is: the Snakefile that `run-chunks` and `demo` run.

The package holds the logic; the workflow (Snakefile, rules/, scripts/, config/) is a
checkout of the repository that the commands are run in, as `snakemake` is."""

from __future__ import annotations

from pathlib import Path

from scribeflow.integration.internals import default_snakefiles


class WorkflowNotFound(FileNotFoundError):
    """No Snakefile where one was expected; the message says what to do."""


def find_snakefile(given: str | Path | None = None, directory: str | Path = ".") -> Path:
    """The Snakefile `given`, else the first in `directory` where Snakemake itself looks,
    as an absolute path."""
    if given is not None:
        path = Path(given).absolute()
        if not path.is_file():
            raise WorkflowNotFound(f"no Snakefile at {path} (--snakefile)")
        return path
    folder = Path(directory).absolute()
    for name in default_snakefiles():
        if (folder / name).is_file():
            return folder / name
    raise WorkflowNotFound(
        f"no Snakefile in {folder}: run this command in the workflow's directory (a checkout of "
        "the scribeflow repository, which holds Snakefile, rules/, scripts/ and config/) or give "
        "--snakefile PATH")
