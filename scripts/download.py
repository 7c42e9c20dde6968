from scribeflow.stages import steps

steps.setup_logging(snakemake.log[0])
steps.download(
    settings=steps.job_settings(snakemake),
    episode=snakemake.wildcards.episode,
    url=snakemake.params.url,
    video=snakemake.output.video,
    expected_size_mb=snakemake.params.expected_size_mb,
    subtitle=snakemake.params.subtitle,
    language=snakemake.params.language,
    duration=snakemake.params.duration,
    media_only=snakemake.params.media_only,
)
