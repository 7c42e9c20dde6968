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
    params:
        # The vote on the language (speech.py finds its windows' speech here) runs without one.
        language=lambda wc: row(wc.episode, "language"),
    script:
        "../scripts/extract_audio.py"
