rule transcribe:
    input:
        unpack(transcribe_input),
    output:
        **transcript_outputs(),
    log:
        LAYOUT.log_pattern("transcribe"),
    benchmark:
        LAYOUT.benchmark_pattern("transcribe")
    # Highest: a finished transcription frees the audio and lets downloads resume.
    priority: 100
    conda:
        "../environment.yml"
    resources:
        transcription_slots=transcription_slot,
        runtime=transcribe_runtime,
    params:
        # The download's path pattern: Snakemake fills in the wildcard, no function per job.
        video=str(rules.download.output.video),
        language=lambda wc: row(wc.episode, "language"),
        duration=lambda wc: row(wc.episode, "duration_s"),
    script:
        "../scripts/transcribe.py"


# subtitles.sample_share: a sampled episode whose transcript is its subtitle is also
# transcribed, and the ASR's character error rate against the subtitle recorded.
rule sample_asr:
    input:
        audio=rules.extract_audio.output.audio,
    output:
        quality=LAYOUT.quality_pattern(),
    log:
        LAYOUT.log_pattern("sample_asr"),
    benchmark:
        LAYOUT.benchmark_pattern("sample_asr")
    priority: 100
    conda:
        "../environment.yml"
    resources:
        transcription_slots=1,
        runtime=transcribe_runtime,
    params:
        language=lambda wc: row(wc.episode, "language"),
    script:
        "../scripts/sample_asr.py"
