rule extract_audio:
    input:
        video=rules.download.output.video,
    output:
        audio=temp_if(
            CLEANUP.delete_audio_after_transcription,
            f"{DATA}/audio/{{episode}}.wav",
        ),
    log:
        f"{LOGS}/extract_audio/{{episode}}.log",
    benchmark:
        f"{BENCHMARKS}/extract_audio/{{episode}}.tsv"
    # Above downloads: extraction frees the video.
    priority: 50
    conda:
        "../environment.yml"
    script:
        "../scripts/extract_audio.py"
