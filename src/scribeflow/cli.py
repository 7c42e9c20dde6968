"""The `scribeflow` command: demo, status, failed, retry, check."""

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
    status.add_argument("--json", action="store_true")
    _add_config_options(status)
    _add_failure_commands(sub)
    args = parser.parse_args(argv)
    if args.command in FAILURE_COMMANDS:
        return FAILURE_COMMANDS[args.command](args)

    if args.command == "demo":
        from .demo import run

        return run(args.workdir, cores=args.cores)
    if args.command == "status":
        from .status import render, snapshot

        config = _load_config(args)
        if config is None:
            return 2
        snap = snapshot(config)
        print(json.dumps(snap, indent=1) if args.json else render(snap))
        return 0
    return 1


def _add_config_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--configfile", default=None, help="config file (default config/config.yaml)")
    parser.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE",
                        help="overrides, e.g. data_dir=/mnt/ssd/scribeflow")


def _load_config(args) -> dict | None:
    """The run's configuration from --configfile and --config; None (after saying why) if invalid."""
    import yaml

    from . import config as cfg

    overrides = {}
    for item in args.config:
        key, _, value = item.partition("=")
        overrides[key] = yaml.safe_load(value)
    try:
        return cfg.load(args.configfile, overrides)
    except cfg.ConfigError as exc:
        print(exc, file=sys.stderr)
        return None


# -- failed episodes (see failures.py) ---------------------------------------------
def _add_failure_commands(sub) -> None:
    failed = sub.add_parser("failed", help="failed episodes: reasons, attempts, whether they are retried")
    failed.add_argument("--json", action="store_true")
    retry = sub.add_parser("retry", help="make failed episodes eligible again for the next run")
    retry.add_argument("ids", nargs="*", help="episode ids (see `scribeflow failed`)")
    retry.add_argument("--all", action="store_true", help="every failed episode")
    check = sub.add_parser("check", help="check that the ledger agrees with the files on disk")
    check.add_argument("--json", action="store_true")
    for parser in (failed, retry, check):
        _add_config_options(parser)


def _failed(args) -> int:
    from .failures import render, report

    config = _load_config(args)
    if config is None:
        return 2
    rows = report(config)
    print(json.dumps(rows, indent=1) if args.json else render(rows))
    return 0


def _retry(args) -> int:
    from .failures import retry

    if bool(args.ids) == args.all:
        print("scribeflow retry: give episode ids or --all, not both", file=sys.stderr)
        return 2
    config = _load_config(args)
    if config is None:
        return 2
    try:
        ids = retry(config, None if args.all else args.ids)
    except ValueError as exc:
        print(f"scribeflow retry: {exc}", file=sys.stderr)
        return 2
    print(f"{len(ids)} episode(s) will be tried again by the next run" + (f": {', '.join(ids)}" if ids else ""))
    return 0


def _check(args) -> int:
    from .recovery import check_consistency

    config = _load_config(args)
    if config is None:
        return 2
    problems = check_consistency(config)
    if args.json:
        print(json.dumps(problems, indent=1))
    else:
        print("\n".join(problems) if problems else "The ledger agrees with the files on disk.")
    return 1 if problems else 0


FAILURE_COMMANDS = {"failed": _failed, "retry": _retry, "check": _check}


if __name__ == "__main__":
    sys.exit(main())
