# scribeflow: catalogue -> download -> audio -> transcript -> tokens -> analysis, within a disk budget.
# The top level stays cheap (config, catalogue, paths): on a cluster every job re-parses it.
from snakemake.utils import min_version

min_version("9.0")


# Beside the Snakefile, so that --directory elsewhere still finds the defaults.
configfile: f"{workflow.basedir}/config/config.yaml"


report: "report/workflow.rst"


include: "rules/common.smk"


localrules:
    all,
    plots,


include: "rules/download.smk"
include: "rules/audio.smk"
include: "rules/transcribe.smk"
include: "rules/corpus.smk"
include: "rules/report.smk"


# The summaries (corpus, plots) read every episode: a run without `chunk` builds them,
# not each chunk's run, since overlapping chunk runs (run-chunks) would both write them.
rule all:
    default_target: True
    input:
        analysis_targets,
        [] if SETTINGS.chunk else [*rules.plots.output, *corpus_outputs().values()],
        lost_corpus_index,


# The run's end, for every rule (Snakemake keeps one onsuccess and one onerror handler):
# the transcription worker let go, the corpus and plots of what is analysed whatever
# failed, the end recorded, and a last line on what failed (scribeflow.ops.run_end).
onsuccess:
    from scribeflow.ops import run_end

    run_end.finish(SETTINGS, CATALOGUE.index)


onerror:
    from scribeflow.ops import run_end
    from scribeflow.integration.internals import run_outcome

    run_end.finish(SETTINGS, CATALOGUE.index, *run_outcome(workflow))
