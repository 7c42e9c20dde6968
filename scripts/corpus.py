from scribeflow import steps

steps.setup_logging(snakemake.log[0])
steps.corpus(
    snakemake.config,
    snakemake.params.stats,
    snakemake.params.lemmas,
    dict(snakemake.output.items()),
)
