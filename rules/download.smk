rule download:
    output:
        video=temp_if(
            CLEANUP["delete_video_after_transcription"],
            f"{STORAGE}/videos/{{episode}}.media",
        ),
    params:
        url=lambda wc: row(wc.episode, "url"),
        expected_size_mb=lambda wc: row(wc.episode, "expected_size_mb"),
    log:
        f"{LOGS}/download/{{episode}}.log",
    benchmark:
        f"{BENCHMARKS}/download/{{episode}}.tsv"
    resources:
        disk_gb=declared_gb,
        download_slots=1,
    priority: 0
    script:
        "../scripts/download.py"
