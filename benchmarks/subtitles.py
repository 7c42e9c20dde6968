"""What a subtitle-sourced episode costs, end to end through the real workflow, and what
`scribeflow evaluate` costs besides the model's decoding.

    python benchmarks/subtitles.py                          # 40 episodes from a folder of ASS files
    python benchmarks/subtitles.py --source page            # ... from the player pages' own tracks
    python benchmarks/subtitles.py --evaluate 3             # and evaluate on 3 Japanese clips (base)
    python benchmarks/subtitles.py --plan 2000              # a plan's judging, and the gate's look after it

Episodes: a 24-min episode's worth of dialogue each (450 ASS lines with styles, a sign and
a karaoke line among them, Japanese text), either in `subtitles.folder` (planned as one job
per episode) or as a `<track>` of a player page served on 127.0.0.1 (found by the download
job from the page's extraction; the media is never requested, and the benchmark checks it).

Printed per episode: each rule's wall and CPU seconds (the jobs' own `Job CPU:` lines),
Snakemake's scheduler (its process's CPU, sampled; it includes judging the local
subtitles while the run is planned), the corpus and plots (once a run, per episode), and
the total. Target (issue: subtitles first): under 1 CPU s per episode.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "src"))
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO / "benchmarks"))

from cpu_budget import ONCE, MainCpu, job_cpu, job_wall  # noqa: E402
from support.server import MediaServer  # noqa: E402

RULES = ("download", "extract_audio", "transcribe", "analyse_episode")
TARGET_CPU_S = 1.0
HEAD = r"""[Script Info]
ScriptType: v4.00+
PlayResX: 1920
PlayResY: 1080

[V4+ Styles]
Format: Name, Fontname, Fontsize, PrimaryColour, SecondaryColour, OutlineColour, BackColour, Bold, Italic, Underline, StrikeOut, ScaleX, ScaleY, Spacing, Angle, BorderStyle, Outline, Shadow, Alignment, MarginL, MarginR, MarginV, Encoding
Style: Default,Arial,60,&H00FFFFFF,&H000000FF,&H00000000,&H00000000,0,0,0,0,100,100,0,0,1,2,2,2,10,10,40,1
Style: OP,Arial,50,&H00FFFFFF,&H000000FF,&H00000000,&H00000000,0,0,0,0,100,100,0,0,1,2,2,8,10,10,40,1

[Events]
Format: Layer, Start, End, Style, Name, MarginL, MarginR, MarginV, Effect, Text
"""
LINES = ["今日はいい天気だね。", "明日も学校に行かなきゃ。", "猫が魚を食べちゃった！", "そんなこと言わないでよ。",
         "早く帰ろう、雨が降りそうだ。", "先生に聞いてみたらどう？", "この本はとても面白かった。"]


def _t(seconds: float) -> str:
    return f"{int(seconds // 3600)}:{int(seconds % 3600 // 60):02d}:{seconds % 60:05.2f}"


def episode_ass(n: int, lines: int = 450) -> str:
    events = ["Dialogue: 0,0:00:05.00,0:00:08.00,OP,,0,0,0,,{\\k20}ka{\\k30}ze{\\k25}ni",
              f"Dialogue: 0,0:00:09.00,0:00:11.00,Default,,0,0,0,,{{\\pos(960,100)}}第{n}話"]
    for i in range(lines):
        start = 20 + i * 3.1
        text = LINES[(i + n) % len(LINES)]
        events.append(f"Dialogue: 0,{_t(start)},{_t(start + 2.6)},Default,,0,0,0,,{{\\i1}}{text[:3]}{{\\i0}}{text[3:]}")
    return HEAD + "\n".join(events) + "\n"


def run(args, work: Path) -> dict:
    shutil.rmtree(work, ignore_errors=True)
    (work / "subs").mkdir(parents=True)
    site = work / "site"
    site.mkdir()
    ids = [f"ep{i:03d}" for i in range(args.episodes)]
    for i, e in enumerate(ids):
        if args.source == "folder":
            (work / "subs" / f"{e}.ja.ass").write_text(episode_ass(i), encoding="utf-8")
        else:
            (site / f"{e}.ja.ass").write_text(episode_ass(i), encoding="utf-8")
            (site / f"{e}.mp4").write_bytes(b"\0" * 1000)  # never requested
            (site / f"{e}.html").write_text(
                f'<!DOCTYPE html><html><head><title>{e}</title></head><body><video src="{e}.mp4">'
                f'<track kind="subtitles" srclang="ja" src="{e}.ja.ass"></video></body></html>', encoding="utf-8")
    with MediaServer(site) as server:
        rows = ["id,url,language,series,duration_s"]
        for e in ids:
            url = server.url(f"{e}.mp4" if args.source == "folder" else f"{e}.html")
            rows.append(f"{e},{url},ja,bench,1440")
        (work / "episodes.csv").write_text("\n".join(rows) + "\n")
        config = {"catalogue": str(work / "episodes.csv"), "data_dir": str(work / "data"),
                  "storage_dir": str(work / "storage"), "subtitles": {"folder": str(work / "subs")}}
        (work / "config.yaml").write_text(json.dumps(config))
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory", str(work),
               "--configfile", str(work / "config.yaml"), "--cores", str(args.cores), "--quiet", "all"]
        started = time.perf_counter()
        proc = subprocess.Popen(cmd, cwd=work, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        main = MainCpu(proc.pid)
        out = proc.stdout.read()
        _, status, _ = os.wait4(proc.pid, 0)
        wall = time.perf_counter() - started
        main.stop()
        media = [p for _, p, _ in server.requests if p.endswith(".mp4")]
    if os.waitstatus_to_exitcode(status):
        sys.exit(f"snakemake failed:\n{out[-4000:]}")
    if media:
        sys.exit(f"the media was requested: {media[:3]}")
    data = work / "data"
    sources = {json.loads((data / "transcripts" / f"{e}.json").read_text())["source"] for e in ids}
    if sources != {"subtitles"}:
        sys.exit(f"transcripts not all from subtitles: {sources}")
    n = len(ids)
    rules = {}
    for rule in RULES + ONCE:
        cpu = job_cpu(data, rule, ids)
        if not cpu:
            continue
        walls = job_wall(data, rule, [e for e in ids if e in cpu] if rule not in ONCE else ids)
        name = f"{rule} (once a run, per episode)" if rule in ONCE else rule
        rules[name] = {"wall": sum(walls.values()) / n, "cpu": sum(c for c, _ in cpu.values()) / n, "jobs": len(cpu)}
    return {"wall": wall, "episodes": n, "rules": rules, "scheduler": main.seconds / n}


def evaluate_cost(clips: int, work: Path) -> dict:
    """`scribeflow evaluate` on `clips` espeak-ng Japanese clips with the multilingual base:
    its wall and CPU seconds, and the decoding's own share (the RTF rows)."""
    import csv

    from support.models import packaged_model

    media = work / "evaluate"
    shutil.rmtree(media, ignore_errors=True)
    media.mkdir(parents=True)
    for i in range(clips):
        lines = [LINES[(i + k) % len(LINES)] for k in range(4)]
        subprocess.run(["espeak-ng", "-v", "ja", "-s", "130", "-w", str(media / f"c{i}.wav"), "\n".join(lines)],
                       check=True)
        (media / f"c{i}.ja.srt").write_text("".join(f"{k + 1}\n00:00:{2 * k:02d},000 --> 00:00:{2 * k + 2:02d},000\n"
                                                    f"{t}\n\n" for k, t in enumerate(lines)), encoding="utf-8")
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    started = time.perf_counter()
    subprocess.run([sys.executable, "-m", "scribeflow.ops.cli", "evaluate", str(media), "--model",
                    str(packaged_model("base")), "--language", "ja", "--out", str(work / "evaluation")], check=True,
                   capture_output=True)
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    rows = list(csv.DictReader((work / "evaluation" / "evaluate.tsv").open(), delimiter="\t"))
    audio = sum(float(r["audio_seconds"]) for r in rows)
    decoding = sum(float(r["rtf"]) * float(r["audio_seconds"]) for r in rows)
    return {"clips": clips, "audio": audio, "wall": wall, "decoding": decoding,
            "cpu": after.ru_utime + after.ru_stime - before.ru_utime - before.ru_stime}


def plan_cost(episodes: int, work: Path) -> dict:
    """What a plan's judging costs per subtitle file (parse, caption cleaning, the verdict's
    atomic write and its bytes told to the gate), and what the gate's next look then costs
    with those verdicts told (no reconciliation since): the Finder the Snakefile uses."""
    from scribeflow.budget.monitor import DiskMonitor
    from scribeflow.config.layout import Layout
    from scribeflow.config.settings import validate
    from scribeflow.stages import subtitles
    from scribeflow.state.ledger import Ledger

    shutil.rmtree(work / "plan", ignore_errors=True)
    subs = work / "plan" / "subs"
    subs.mkdir(parents=True)
    for i in range(episodes):
        (subs / f"p{i:05d}.ja.ass").write_text(episode_ass(i), encoding="utf-8")
    settings = validate({"data_dir": str(work / "plan" / "data"), "subtitles": {"folder": str(subs)}})
    with Ledger.for_config(settings) as ledger:
        ledger.enqueue(["old"])
    monitor = DiskMonitor.from_config(settings)
    monitor.reconcile()
    look = time.perf_counter()
    monitor.current_usage(fresh=True)
    look = time.perf_counter() - look
    finder = subtitles.Finder(settings, Layout.from_config(settings), lambda e, c: "ja" if c == "language" else None)
    before = resource.getrusage(resource.RUSAGE_SELF)
    started = time.perf_counter()
    assert all(finder.subtitled(f"p{i:05d}") for i in range(episodes))
    wall = time.perf_counter() - started
    after = resource.getrusage(resource.RUSAGE_SELF)
    told = time.perf_counter()
    usage = monitor.current_usage(fresh=True)
    told = time.perf_counter() - told
    folder = Layout.from_config(settings).subtitles
    on_disk = sum(e.stat().st_blocks * 512 for e in os.scandir(folder))
    return {"episodes": episodes, "wall": wall, "cpu": after.ru_utime + after.ru_stime - before.ru_utime
            - before.ru_stime, "on_disk": on_disk, "counted": usage.transcripts, "look": look, "look_told": told}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--episodes", type=int, default=40)
    parser.add_argument("--source", choices=("folder", "page"), default="folder")
    parser.add_argument("--cores", type=int, default=os.cpu_count() or 2)
    parser.add_argument("--evaluate", type=int, default=0, metavar="CLIPS")
    parser.add_argument("--work", type=Path, default=Path("/tmp/scribeflow-subtitles-bench"))
    parser.add_argument("--plan", type=int, default=0, metavar="EPISODES",
                        help="only the plan's judging of EPISODES subtitle files and the gate's next look")
    args = parser.parse_args()
    if args.plan:
        p = plan_cost(args.plan, args.work)
        print(f"{time.strftime('%Y-%m-%d')}: a plan judges {p['episodes']} subtitle files (450 ASS lines each): "
              f"{p['wall']:.1f} s wall, {1000 * p['wall'] / p['episodes']:.1f} ms and "
              f"{1000 * p['cpu'] / p['episodes']:.1f} CPU ms a file; verdicts {p['on_disk'] / 1e6:.1f} MB on disk, "
              f"{p['counted'] / 1e6:.1f} MB counted by the gate's next look (no walk since)")
        print(f"the gate's look: {1000 * p['look']:.1f} ms before the plan, {1000 * p['look_told']:.1f} ms after it")
        return 0

    r = run(args, args.work)
    n = r["episodes"]
    print(f"{time.strftime('%Y-%m-%d')}: {n} subtitle-sourced episode(s) of 24 min (450 ASS lines each), "
          f"source {args.source}, {args.cores} cores; no media requested")
    print(f"{'stage':34} {'jobs':>5} {'wall s/ep':>10} {'CPU s/ep':>9}")
    for rule, v in r["rules"].items():
        print(f"{rule:34} {v['jobs']:5d} {v['wall']:10.2f} {v['cpu']:9.2f}")
    print(f"{'Snakemake: the scheduler':34} {'':>5} {'':>10} {r['scheduler']:9.2f}")
    total = sum(v["cpu"] for v in r["rules"].values()) + r["scheduler"]
    print(f"{'total':34} {'':>5} {'':>10} {total:9.2f}   (target < {TARGET_CPU_S:g}: "
          f"{'met' if total < TARGET_CPU_S else 'MISSED'})")
    print(f"run: {r['wall']:.0f} s wall, {n / r['wall'] * 3600:.0f} episodes/hour at {args.cores} cores")
    if args.evaluate:
        e = evaluate_cost(args.evaluate, args.work)
        print(f"evaluate: {e['clips']} clip(s), {e['audio']:.1f} s of audio, base on the CPU: {e['wall']:.1f} s wall, "
              f"{e['cpu']:.1f} CPU s; decoding {e['decoding']:.1f} s of it, the rest (model load, audio, "
              f"subtitles, CER, files) {e['wall'] - e['decoding']:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
