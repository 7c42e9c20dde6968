from scribeflow import steps

steps.setup_logging(snakemake.log[0])
steps.extract_audio(
    snakemake.config,
    snakemake.wildcards.episode,
    snakemake.input.video,
    snakemake.output.audio,
)
