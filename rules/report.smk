# Plots for the operator and for `snakemake --report`; drawn from the ledger once every
# transcript of this run exists (`scribeflow plots` draws them at any time).
rule plots:
    input:
        transcripts=transcript_targets,
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
        f"{REPORTS}/plots.log",
    benchmark:
        f"{REPORTS}/plots.benchmark.tsv"
    conda:
        "../environment.yml"
    script:
        "../scripts/plots.py"
