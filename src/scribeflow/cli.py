"""The `scribeflow` command: demo, status and run-chunks."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="scribeflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the workflow on the bundled demo catalogue")
    demo.add_argument("--workdir", default="demo-run", type=Path)
    demo.add_argument("--cores", default=2, type=int)
    status = sub.add_parser("status", help="the ledger's view of a run")
    status.add_argument("--configfile", default=None, help="config file (default config/config.yaml)")
    status.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides, e.g. data_dir=/mnt/ssd/scribeflow")
    status.add_argument("--json", action="store_true")
    add_run_chunks(sub)
    args = parser.parse_args(argv)

    if args.command == "demo":
        from .demo import run

        return run(args.workdir, cores=args.cores)
    if args.command == "status":
        from .status import render, snapshot
        from . import config as cfg
        import yaml

        overrides = {}
        for item in args.config:
            key, _, value = item.partition("=")
            overrides[key] = yaml.safe_load(value)
        try:
            config = cfg.load(args.configfile, overrides)
        except cfg.ConfigError as exc:
            print(exc, file=sys.stderr)
            return 2
        snap = snapshot(config)
        print(json.dumps(snap, indent=1) if args.json else render(snap))
        return 0
    if args.command == "run-chunks":
        from .chunks import main as run_chunks

        return run_chunks(args)
    return 1


def add_run_chunks(sub) -> None:
    p = sub.add_parser(
        "run-chunks",
        help="run the whole catalogue chunk by chunk, resumably",
        description="Run Snakemake once per chunk of the catalogue (--config chunk=K/N), skipping chunks "
        "whose transcripts all exist; the next chunk starts while the last one's transcriptions run. "
        "Arguments after -- go to every snakemake run, e.g. -- --profile gpu --cores 8.",
    )
    p.add_argument("--chunk-size", type=int, default=2000, help="episodes per chunk (default 2000)")
    p.add_argument("--directory", "-d", default=".", help="Snakemake's working directory (default .)")
    p.add_argument("--configfile", action="append", default=[], help="as snakemake --configfile")
    p.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE", help="as snakemake --config")
    p.add_argument("--no-overlap", action="store_true", help="start a chunk only when the previous one ended")
    p.add_argument("--unlock", action="store_true", help="release a lock left by a killed run first")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between progress checks (default 5)")
    p.add_argument("snakemake_args", nargs=argparse.REMAINDER, help="-- then snakemake arguments")


if __name__ == "__main__":
    sys.exit(main())
