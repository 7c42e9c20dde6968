"""The `scribeflow` command: demo and status."""

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
    return 1


if __name__ == "__main__":
    sys.exit(main())
