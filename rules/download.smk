rule download:
    output:
        video=temp_if(
            CLEANUP.delete_video_after_transcription,
            LAYOUT.video_pattern(),
        ),
    log:
        LAYOUT.log_pattern("download"),
    benchmark:
        LAYOUT.benchmark_pattern("download")
    priority: 0
    conda:
        "../environment.yml"
    resources:
        disk_gb=declared_gb,
        download_slots=1,
    params:
        url=lambda wc: row(wc.episode, "url"),
        expected_size_mb=lambda wc: row(wc.episode, "expected_size_mb"),
        subtitle=lambda wc: row(wc.episode, "subtitle"),
        language=lambda wc: row(wc.episode, "language"),
        duration=lambda wc: row(wc.episode, "duration_s"),
        # A subtitled episode is downloaded only when sampled (rule sample_asr): its media.
        media_only=lambda wc: SUBTITLES.subtitled(wc.episode),
    script:
        "../scripts/download.py"
