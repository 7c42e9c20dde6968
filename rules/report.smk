# Plots for the operator and for `snakemake --report`; drawn from the ledger once every
# transcript of this run exists (`scribeflow plots` draws them at any time).
rule plots:
    input:
        transcripts=transcript_targets,
    output:
        disk=report(
            f"{DATA}/reports/disk_usage.png",
            caption="../report/disk_usage.rst",
            category="Run",
        ),
        throughput=report(
            f"{DATA}/reports/throughput.png",
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
