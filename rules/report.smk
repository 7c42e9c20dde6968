# Plots for the operator and for `snakemake --report`; drawn from the ledger once every
# episode of this run is through, to the corpus (`scribeflow plots` draws them at any
# time). Not from the transcripts: with delete_transcript_after_tokenization they go early.
rule plots:
    input:
        corpus=rules.corpus.output.coverage,
    output:
        disk=report(
            str(LAYOUT.report_files()["disk"]),
            caption="../report/disk_usage.rst",
            category="Run",
        ),
        throughput=report(
            str(LAYOUT.report_files()["throughput"]),
            caption="../report/throughput.rst",
            category="Run",
        ),
    log:
        LAYOUT.run_log("plots"),
    benchmark:
        LAYOUT.run_benchmark("plots")
    conda:
        "../environment.yml"
    script:
        "../scripts/plots.py"
