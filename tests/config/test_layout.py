"""The on-disk layout: the paths of the Files contract, given the config, and no second
place that builds them."""

import ast
import re
from pathlib import Path

import pytest
from support import REPO as ROOT  # noqa: E402

from scribeflow.config import layout as sf_layout
from scribeflow.config import settings as cfg
from scribeflow.config.layout import Layout

PACKAGE = ROOT / "src" / "scribeflow"


@pytest.mark.parametrize("gzip", [False, True])
def test_paths_follow_the_files_table(tmp_path, gzip):
    data, storage = tmp_path / "ssd", tmp_path / "bulk"
    config = cfg.validate({"data_dir": str(data), "storage_dir": str(storage),
                           "transcribe": {"gzip": gzip, "formats": ["srt", "vtt"]}})
    layout = Layout.from_config(config)
    gz = ".gz" if gzip else ""

    # {storage_dir}/videos/{id}.*, {data_dir}/audio/{id}.*: temporary.
    assert layout.video("ep1") == storage / "videos" / "ep1.media"
    assert layout.audio_file("ep1") == data / "audio" / "ep1.wav"
    # {data_dir}/transcripts/{id}.json (the target) with .srt / .vtt beside it.
    assert layout.transcript("ep1") == data / "transcripts" / f"ep1.json{gz}"
    assert layout.transcript("ep1", "srt") == data / "transcripts" / f"ep1.srt{gz}"
    assert layout.transcript_patterns() == {
        fmt: str(data / "transcripts" / f"{{episode}}.{fmt}{gz}") for fmt in ("json", "srt", "vtt")}
    # Downstream stages under tokens/ and analysis/.
    assert layout.tokens_file("ep1") == data / "tokens" / "ep1.parquet"
    assert layout.stats_file("ep1") == data / "analysis" / "episodes" / "ep1.json"
    assert layout.lemmas_file("ep1") == data / "analysis" / "lemmas" / "ep1.parquet"
    assert layout.corpus_files() == {key: str(data / "analysis" / "corpus" / name) for key, name in (
        ("frequency", "lemma_frequency.tsv"), ("series_frequency", "series_lemma_frequency.tsv"),
        ("coverage", "coverage.tsv"), ("episodes", "episodes.tsv"), ("plot", "coverage.png"),
        ("shows", "shows.tsv"), ("shows_plot", "shows.png"))}
    assert layout.corpus_index == data / "analysis" / "corpus" / "index.db"
    # What was found of the subtitles, and the sampled ASR's error rate.
    assert layout.subtitle_verdict("ep1") == data / "subtitles" / "ep1.subtitle.json"
    assert layout.quality_file("ep1") == data / "quality" / "ep1.json"
    # The ledger, and the state every process shares.
    assert layout.ledger == data / "jobs.db"
    assert layout.gate_state == data / "gate" / "state.json"
    assert layout.gate_lock == data / "gate" / "gate.lock"
    assert layout.accounting == data / "gate" / "accounting.json"
    assert layout.transcription_slots == data / "gate" / "transcription"
    assert layout.hosts_state == data / "hosts" / "state.json"
    assert layout.failed_marker("ep1") == data / "failed" / "ep1.json"
    assert layout.check_state == data / "check.json"
    assert layout.log_file("transcribe", "ep1") == data / "logs" / "transcribe" / "ep1.log"
    assert layout.benchmark_file("transcribe", "ep1") == data / "benchmarks" / "transcribe" / "ep1.tsv"
    assert layout.run_log("corpus") == str(data / "logs" / "corpus" / "corpus.log")
    assert layout.run_benchmark("plots") == str(data / "benchmarks" / "plots.tsv")
    assert layout.rollup == data / "logs" / "rollup"
    assert layout.report_files() == {"disk": data / "reports" / "disk_usage.png",
                                     "throughput": data / "reports" / "throughput.png"}


def test_each_path_is_its_pattern_filled_in(tmp_path):
    layout = Layout(tmp_path / "d", tmp_path / "s", gzip=True)
    pairs = [(layout.video_pattern(), layout.video), (layout.audio_pattern(), layout.audio_file),
             (layout.transcript_pattern(), layout.transcript), (layout.tokens_pattern(), layout.tokens_file),
             (layout.stats_pattern(), layout.stats_file), (layout.lemmas_pattern(), layout.lemmas_file),
             (layout.log_pattern("download"), lambda e: layout.log_file("download", e)),
             (layout.benchmark_pattern("download"), lambda e: layout.benchmark_file("download", e))]
    for pattern, path in pairs:
        assert pattern.count("{episode}") == 1
        assert Path(pattern.format(episode="ep.1")) == path("ep.1")


def test_the_config_decides_the_outputs():
    base = {"data_dir": "d", "storage_dir": "s"}
    kept = Layout.from_config(cfg.validate(base))
    assert kept.storage_dir == Path("s") and kept.analysis_patterns() == {
        "stats": "d/analysis/episodes/{episode}.json", "lemmas": "d/analysis/lemmas/{episode}.parquet",
        "tokens": "d/tokens/{episode}.parquet"}
    dropped = Layout.from_config(cfg.validate({**base, "disk_management": {"cleanup": {
        "delete_tokens_after_analysis": True}}}))
    assert "tokens" not in dropped.analysis_patterns()
    # storage_dir defaults to data_dir; relative roots are taken from a run's directory.
    assert Layout("d").storage_dir == Path("d")
    assert Layout.from_config(base).under("/w").video("x") == Path("/w/s/videos/x.media")


# -- no second copy ---------------------------------------------------------------------------
# The names the layout gives to folders and files under data_dir and storage_dir.
NAMES = {"videos", "audio", "transcripts", "tokens", "analysis", "episodes", "lemmas", "corpus", "logs",
         "benchmarks", "reports", "gate", "hosts", "failed", "jobs.db", "rollup", "transcription",
         "transcribe_worker", "check.json", "state.json", "gate.lock", "hosts.lock", "accounting.json", "cache"}
ROOT_KEYS = {"data_dir", "storage_dir"}


def _docstrings(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                yield body[0].value


def _path_building(source: str) -> list[str]:
    """Places in `source` that join a layout name onto a path, or a data_dir/storage_dir
    config value onto anything."""
    tree = ast.parse(source)
    docs = {id(d) for d in _docstrings(tree)}
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Div):
            right = node.right
            if isinstance(right, ast.Constant) and right.value in NAMES:
                found.append(f"line {node.lineno}: / {right.value!r}")
            for side in (node.left, node.right):
                if isinstance(side, ast.Call) and getattr(side.func, "id", None) == "Path":
                    side = side.args[0] if side.args else side
                if isinstance(side, ast.Subscript) and getattr(side.slice, "value", None) in ROOT_KEYS:
                    found.append(f"line {node.lineno}: a path joined onto [{side.slice.value!r}]")
        elif (isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docs
              or isinstance(node, ast.JoinedStr)):
            # "/audio/", "{DATA}/transcripts/", "logs/RULE/": a folder written into a path
            # string (not a MIME type such as "audio/mp4").
            text = node.value if isinstance(node, ast.Constant) else "".join(
                v.value if isinstance(v, ast.Constant) else "{}" for v in node.values)
            for name in NAMES:
                if re.search(rf"/{re.escape(name)}/", text) or (text.startswith(f"{name}/") and text.count("/") > 1):
                    found.append(f"line {node.lineno}: {text!r}")
    return found


def test_only_the_layout_builds_paths_under_the_roots():
    problems = []
    for path in sorted(PACKAGE.glob("*.py")):
        if path.name == "layout.py":
            continue
        problems += [f"{path.name} {p}" for p in _path_building(path.read_text())]
    assert not problems, "paths built outside scribeflow.config.layout:\n" + "\n".join(problems)


def test_the_rules_take_their_paths_from_the_layout():
    problems = []
    for path in [ROOT / "Snakefile", *sorted((ROOT / "rules").glob("*.smk"))]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#")[0]
            if re.search(r'config\["(data_dir|storage_dir)"\]', code) or re.search(
                    r'["\'][^"\']*\b(' + "|".join(map(re.escape, NAMES)) + r')/', code):
                problems.append(f"{path.name}:{n}: {line.strip()}")
    assert not problems, "paths written in the workflow instead of LAYOUT:\n" + "\n".join(problems)


def test_the_check_finds_a_copy():
    assert _path_building('p = Path(config["data_dir"]) / "jobs.db"\n')
    assert _path_building('p = root / "transcripts" / name\n')
    assert _path_building('p = f"{DATA}/audio/{{episode}}.wav"\n')
    assert _path_building('p = f"logs/{rule}/{episode}.log"\n')
    assert not _path_building('mime = "audio/mp4"\n')
    assert not _path_building('p = layout.transcript(episode)\n')


def test_suffixes_have_one_owner():
    """The file-name facts are defined in layout.py alone: every other module imports them."""
    import ast

    owned = {"PARTIAL_SUFFIXES", "STAGING_MARK", "transcript_suffix", "TRANSCRIPT_SUFFIXES", "EPISODE_RULES",
             "ACCOUNTING_FILE", "LEDGER_FILE", "STATE_FILE"}
    package = Path(sf_layout.__file__).parent
    defined = {}
    for path in package.glob("*.py"):
        for node in ast.parse(path.read_text()).body:
            targets = ([t.id for t in node.targets if isinstance(t, ast.Name)] if isinstance(node, ast.Assign)
                       else [node.name] if isinstance(node, (ast.FunctionDef, ast.ClassDef)) else [])
            defined.update({name: path.name for name in targets if name in owned})
    assert set(defined.values()) == {"layout.py"}, defined
    assert set(defined) == owned
