from scribeflow import steps

steps.setup_logging(snakemake.log[0])
steps.transcribe(
    snakemake.config,
    snakemake.wildcards.episode,
    snakemake.input.audio,
    dict(snakemake.output.items()),
    snakemake.params.video,
    snakemake.params.language,
)
