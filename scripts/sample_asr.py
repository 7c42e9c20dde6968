from scribeflow.stages import steps

steps.setup_logging(snakemake.log[0])
steps.sample_asr(
    settings=steps.job_settings(snakemake),
    episode=snakemake.wildcards.episode,
    audio=snakemake.input.audio,
    quality=snakemake.output.quality,
    language=snakemake.params.language,
)
