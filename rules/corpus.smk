# Tokenize and analyse in one job: each job per episode costs Snakemake ~1.5 ms of planning
# (docs/benchmarks.md). Tokens are written unless delete_tokens_after_analysis.
rule analyse_episode:
    input:
        transcript=rules.transcribe.output.json,
    output:
        **episode_analysis_outputs(),
    log:
        LAYOUT.log_pattern("analyse_episode"),
    benchmark:
        LAYOUT.benchmark_pattern("analyse_episode")
    # Above downloads (0), below extraction and transcription, which free space: a second
    # of CPU. Below downloads, analyses would wait for a run's last download, and each of
    # Snakemake's scheduling rounds stats the inputs of every ready job (quadratic).
    priority: 10
    conda:
        "../environment.yml"
    params:
        language=lambda wc: row(wc.episode, "language"),
        series=lambda wc: row(wc.episode, "series"),
        season=lambda wc: row(wc.episode, "season"),
    script:
        "../scripts/analyse_episode.py"


# The corpus index is written by each analyse_episode job. Planned only when it was lost
# (deleted, or never built while analyses exist): rebuilt from the tokens.
rule corpus_index:
    input:
        stats=analysis_targets,
    output:
        index=str(LAYOUT.corpus_index),
    log:
        LAYOUT.run_log("corpus_index"),
    benchmark:
        LAYOUT.run_benchmark("corpus_index")
    conda:
        "../environment.yml"
    params:
        stats=lambda wc: EPISODE_STATS,
        lemmas=lambda wc: EPISODE_LEMMAS,
    script:
        "../scripts/corpus_index.py"


rule corpus:
    input:
        # Only this run's new analyses (or one old one): they order and trigger the
        # rebuild, which reads the episodes analysed since the last one.
        stats=analysis_targets,
        index=lost_corpus_index,
    output:
        frequency=report(
            corpus_outputs()["frequency"],
            caption="../report/frequency.rst",
            category="Corpus",
        ),
        series_frequency=report(
            corpus_outputs()["series_frequency"],
            caption="../report/series_frequency.rst",
            category="Corpus",
        ),
        coverage=report(
            corpus_outputs()["coverage"],
            caption="../report/coverage_table.rst",
            category="Corpus",
        ),
        episodes=report(
            corpus_outputs()["episodes"],
            caption="../report/episodes.rst",
            category="Corpus",
        ),
        plot=report(
            corpus_outputs()["plot"],
            caption="../report/coverage_plot.rst",
            category="Corpus",
        ),
        shows=report(
            corpus_outputs()["shows"],
            caption="../report/shows.rst",
            category="Shows",
        ),
        shows_plot=report(
            corpus_outputs()["shows_plot"],
            caption="../report/shows_plot.rst",
            category="Shows",
        ),
    log:
        LAYOUT.run_log("corpus"),
    benchmark:
        LAYOUT.run_benchmark("corpus")
    conda:
        "../environment.yml"
    # Functions: a plain string's {episode} would be taken for a wildcard.
    params:
        stats=lambda wc: EPISODE_STATS,
        lemmas=lambda wc: EPISODE_LEMMAS,
    script:
        "../scripts/corpus.py"
