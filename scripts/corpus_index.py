from scribeflow.stages import steps

steps.setup_logging(snakemake.log[0])
steps.corpus_index(
    settings=steps.job_settings(snakemake),
    stats_pattern=snakemake.params.stats,
    lemmas_pattern=snakemake.params.lemmas,
)
