from scribeflow.ops import plots
from scribeflow.stages import steps

steps.setup_logging(snakemake.log[0])
plots.draw_all(steps.job_settings(snakemake), snakemake.output.disk, snakemake.output.throughput)
