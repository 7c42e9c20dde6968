import os
import signal
import subprocess
import sys
import time

import pytest
from conftest import REPO, leftover_temp_files, workflow_config, write_catalogue

from scribeflow.budget.cleanup import clean_orphans
from scribeflow.config import settings as cfg


def touch(path, size=8192):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)
    return path


def test_orphans_of_a_crash_are_removed_and_needed_files_kept(tmp_path):
    config = cfg.validate({"data_dir": str(tmp_path / "d"), "storage_dir": str(tmp_path / "s")})
    videos, audio, transcripts = tmp_path / "s" / "videos", tmp_path / "d" / "audio", tmp_path / "d" / "transcripts"
    doomed = [
        touch(videos / "a.media.part"),  # killed download
        touch(videos / "b.media"),  # transcribed, video left behind
        touch(videos / "c.media"),  # its audio exists: the video is no longer needed
        touch(audio / "d.wav"),  # transcribed, audio left behind
        touch(audio / ".e.wav.x1.tmp"),  # half-written audio
    ]
    kept = [
        touch(transcripts / "b.json", 100), touch(transcripts / "d.json", 100),
        touch(audio / "c.wav"),  # pending transcription
        touch(videos / "f.media"),  # pending extraction
    ]
    files, freed = clean_orphans(config)
    assert files == 5 and freed >= 5 * 8192
    assert [p for p in doomed if p.exists()] == []
    assert all(p.exists() for p in kept)


def test_files_held_by_a_live_download_are_kept(tmp_path):
    from scribeflow.budget.gate import DownloadGate

    config = cfg.validate({"data_dir": str(tmp_path / "d"), "storage_dir": str(tmp_path / "s")})
    part = touch(tmp_path / "s" / "videos" / "x.media.part")
    with DownloadGate.from_config(config).admitted("x", 10**6, [part]):
        assert clean_orphans(config) == (0, 0)
    assert clean_orphans(config)[0] == 1 and not part.exists()


@pytest.mark.slow
def test_a_killed_run_resumes_and_leaves_no_orphans(tmp_path, speech_dir, model_path):
    from support.server import MediaServer

    with MediaServer(speech_dir, rate_bytes_per_s=40_000) as server:  # slow: kill lands mid-download
        rows = [{"id": f"ep{n:02d}", "url": server.url(f"ep{n:02d}.mp4")} for n in range(1, 5)]
        catalogue = write_catalogue(tmp_path / "episodes.csv", rows)
        config = workflow_config(tmp_path, catalogue, model_path)
        import yaml

        (tmp_path / "config.yaml").write_text(yaml.safe_dump(config))
        cmd = [sys.executable, "-m", "snakemake", "--snakefile", str(REPO / "Snakefile"), "--directory",
               str(tmp_path), "--configfile", str(tmp_path / "config.yaml"), "--cores", "3"]
        proc = subprocess.Popen(cmd, cwd=tmp_path, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                                start_new_session=True)
        deadline = time.time() + 60
        while time.time() < deadline and not list((tmp_path / "storage" / "videos").glob("*.part")):
            time.sleep(0.05)
        assert list((tmp_path / "storage" / "videos").glob("*.part")), "no download started"
        os.killpg(proc.pid, signal.SIGKILL)  # the whole process tree, like a power cut
        proc.wait()
        assert list((tmp_path / "storage" / "videos").glob("*.part"))  # the crash left debris

        # The documented resume: release the lock the killed run left, then the same command.
        subprocess.run([*cmd, "--unlock"], cwd=tmp_path, check=True, capture_output=True)
        rerun = subprocess.run(cmd, cwd=tmp_path, capture_output=True, text=True, timeout=600)
    assert rerun.returncode == 0, rerun.stdout[-4000:] + rerun.stderr[-4000:]
    assert "orphaned file(s) of an interrupted run, freed" in rerun.stdout + rerun.stderr
    for row in rows:
        assert (tmp_path / "data" / "transcripts" / f"{row['id']}.json").is_file()
    assert leftover_temp_files(tmp_path) == []


def test_corpus_cleanup_flags_make_used_transcripts_and_tokens_orphans(tmp_path):
    d = tmp_path / "d"
    files = {
        "tokenized": touch(d / "transcripts" / "a.json", 100), "its_tokens": touch(d / "tokens" / "a.parquet", 100),
        "analysed": touch(d / "analysis" / "episodes" / "a.json", 100),
        "pending": touch(d / "transcripts" / "b.json", 100),  # not tokenized yet
        "pending_tokens": touch(d / "tokens" / "c.parquet", 100),  # not analysed yet
        "half_written": touch(d / "analysis" / "lemmas" / ".c.parquet.x1.tmp", 100),
    }
    config = cfg.validate({"data_dir": str(d), "storage_dir": str(tmp_path / "s")})
    assert clean_orphans(config)[0] == 1 and not files["half_written"].exists()  # flags off: data kept
    config = cfg.updated(config, {"disk_management": {"cleanup": {
        "delete_transcript_after_tokenization": True, "delete_tokens_after_analysis": True}}})
    assert clean_orphans(config)[0] == 2
    assert sorted(k for k, p in files.items() if p.exists()) == ["analysed", "pending", "pending_tokens"]
