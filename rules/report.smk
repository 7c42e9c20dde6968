# Plots for the operator and for `snakemake --report`; drawn from the ledger once every
# episode of this run is through, to the corpus (`scribeflow plots` draws them at any
# time). Not from the transcripts: with delete_transcript_after_tokenization they go early.
rule plots:
    input:
        corpus=rules.corpus.output.coverage,
    output:
        disk=report(
            f"{REPORTS}/disk_usage.png",
            caption="../report/disk_usage.rst",
            category="Run",
        ),
        throughput=report(
            f"{REPORTS}/throughput.png",
            caption="../report/throughput.rst",
            category="Run",
        ),
    log:
        f"{LOGS}/plots.log",
    benchmark:
        f"{BENCHMARKS}/plots.tsv"
    conda:
        "../environment.yml"
    script:
        "../scripts/plots.py"
