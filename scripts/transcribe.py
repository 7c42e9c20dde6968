from scribeflow.stages import steps

steps.setup_logging(snakemake.log[0])
steps.transcribe(
    settings=steps.job_settings(snakemake),
    episode=snakemake.wildcards.episode,
    audio=snakemake.input.get("audio"),
    subtitle=snakemake.input.get("subtitle"),
    outputs=dict(snakemake.output.items()),
    video=snakemake.params.video,
    language=snakemake.params.language,
    duration=snakemake.params.duration,
)
