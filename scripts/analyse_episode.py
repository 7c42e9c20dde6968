from scribeflow.stages import steps

steps.setup_logging(snakemake.log[0])
steps.analyse_episode(
    settings=steps.job_settings(snakemake),
    episode=snakemake.wildcards.episode,
    transcript=snakemake.input.transcript,
    tokens=snakemake.output.get("tokens"),
    stats=snakemake.output.stats,
    lemmas=snakemake.output.lemmas,
    language=snakemake.params.language,
    series=snakemake.params.series,
    season=snakemake.params.season,
)
