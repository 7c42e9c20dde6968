rule extract_audio:
    input:
        video=rules.download.output.video,
    output:
        audio=temp_if(
            CLEANUP.delete_audio_after_transcription,
            LAYOUT.audio_pattern(),
        ),
    log:
        LAYOUT.log_pattern("extract_audio"),
    benchmark:
        LAYOUT.benchmark_pattern("extract_audio")
    # Above downloads: extraction frees the video.
    priority: 50
    conda:
        "../environment.yml"
    script:
        "../scripts/extract_audio.py"
