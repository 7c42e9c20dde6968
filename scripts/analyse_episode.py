from scribeflow import steps

steps.setup_logging(snakemake.log[0])
steps.analyse_episode(
    snakemake.config,
    snakemake.wildcards.episode,
    snakemake.input.transcript,
    snakemake.output.get("tokens"),
    snakemake.output.stats,
    snakemake.output.lemmas,
    snakemake.params.language,
)
