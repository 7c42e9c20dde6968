from scribeflow import steps

steps.setup_logging(snakemake.log[0])
steps.download(
    snakemake.config,
    snakemake.wildcards.episode,
    snakemake.params.url,
    snakemake.output.video,
    snakemake.params.expected_size_mb,
)
