from scribeflow.stages import steps

steps.setup_logging(snakemake.log[0])
steps.extract_audio(
    settings=steps.job_settings(snakemake),
    episode=snakemake.wildcards.episode,
    video=snakemake.input.video,
    audio=snakemake.output.audio,
    language=snakemake.params.language,
)
