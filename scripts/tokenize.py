import _scribeflow_path  # noqa: F401  (first: puts src/ on sys.path)
from scribeflow import steps

steps.setup_logging(snakemake.log[0])
steps.tokenize(
    snakemake.config,
    snakemake.wildcards.episode,
    snakemake.input.transcript,
    snakemake.output.tokens,
    snakemake.params.language,
)
