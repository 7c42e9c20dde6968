from scribeflow.stages import steps

steps.setup_logging(snakemake.log[0])
steps.corpus(
    settings=steps.job_settings(snakemake),
    stats_pattern=snakemake.params.stats,
    lemmas_pattern=snakemake.params.lemmas,
    outputs=dict(snakemake.output.items()),
)
