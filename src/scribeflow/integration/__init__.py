"""Where scribeflow meets Snakemake: its internals, touched here only (internals.py), the
packaged workflow's location (workflow.py), and cluster helpers (cluster.py)."""
