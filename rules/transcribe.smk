rule transcribe:
    input:
        audio=rules.extract_audio.output.audio,
    output:
        **transcript_outputs(),
    params:
        video=lambda wc: f"{STORAGE}/videos/{wc.episode}.media",
        language=lambda wc: row(wc.episode, "language"),
    log:
        f"{LOGS}/transcribe/{{episode}}.log",
    benchmark:
        f"{BENCHMARKS}/transcribe/{{episode}}.tsv"
    resources:
        transcription_slots=1,
    # Highest: a finished transcription frees the audio and lets downloads resume.
    priority: 100
    script:
        "../scripts/transcribe.py"
