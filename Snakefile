# scribeflow: catalogue -> download -> audio -> transcript, within a disk budget.
# The top level stays cheap (config, catalogue, paths): on a cluster every job re-parses it.
from snakemake.utils import min_version

min_version("9.0")


configfile: "config/config.yaml"


include: "rules/common.smk"


localrules:
    all,


rule all:
    input:
        transcript_targets(),
    default_target: True


include: "rules/download.smk"
include: "rules/audio.smk"
include: "rules/transcribe.smk"
