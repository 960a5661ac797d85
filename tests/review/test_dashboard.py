"""`hpo dashboard`: its API lists the study, its trials and their artifacts and serves them (no
browser needed); in a real browser, headless Chromium shows the same."""

from __future__ import annotations

import json
import re
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
needs_chromium = pytest.mark.skipif(
    CHROMIUM is None, reason="browser test: Chromium not installed (apt-get install chromium)"
)
ARTIFACTS = {"confusion_matrix.png": b"\x89PNG", "learning_curves.png": b"\x89PNG", "per_class.csv": b"class,precision"}


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def chromium(profile: Path, *args: str) -> str:
    """Run headless Chromium with the network flags this sandbox needs; returns stdout."""
    command = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
               "--disable-background-networking", "--disable-component-update", "--disable-sync",
               f"--user-data-dir={profile}", "--virtual-time-budget=15000", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=120).stdout


@pytest.fixture
def dashboard(finished_study, tmp_path):
    port = free_port()
    log = (tmp_path / "dashboard.log").open("w")
    process = subprocess.Popen(
        [sys.executable, "-m", "hpo", "dashboard", "--study", str(finished_study.path),
         "--storage", finished_study.url, "--port", str(port)],
        cwd=finished_study.folder, stdout=log, stderr=subprocess.STDOUT,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 90
    while True:
        try:
            urllib.request.urlopen(f"{base}/api/meta", timeout=2).read()
            break
        except OSError:
            assert process.poll() is None, (tmp_path / "dashboard.log").read_text()
            assert time.monotonic() < deadline, "dashboard did not start in 90 s"
            time.sleep(0.5)
    yield base
    process.terminate()
    process.wait(timeout=30)
    log.close()
    assert f"http://127.0.0.1:{port}/" in (tmp_path / "dashboard.log").read_text()  # local only by default


def get(url: str) -> bytes:
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200, url
        return response.read()


def test_api_lists_the_trials_and_serves_their_artifacts(dashboard, finished_study):
    [summary] = json.loads(get(f"{dashboard}/api/studies"))["study_summaries"]
    assert summary["study_name"] == "tiny"
    study = json.loads(get(f"{dashboard}/api/studies/{summary['study_id']}"))
    assert [t["number"] for t in study["trials"]] == [0, 1, 2]
    for trial in study["trials"]:
        files = {a["filename"]: a["artifact_id"] for a in trial["artifacts"]}
        assert set(ARTIFACTS) <= set(files), trial["number"]
        for name, magic in ARTIFACTS.items():
            body = get(f"{dashboard}/artifacts/{summary['study_id']}/{trial['trial_id']}/{files[name]}")
            assert body.startswith(magic), (trial["number"], name)


@needs_chromium
def test_browser_lists_study_trials_and_artifacts(dashboard, finished_study, tmp_path):
    profile = tmp_path / "chromium-profile"
    home = chromium(profile, "--dump-dom", f"{dashboard}/dashboard")
    assert re.search(r">1\. tiny<", home), "the study is not listed on the dashboard's home page"

    trials = chromium(profile, "--dump-dom", f"{dashboard}/dashboard/studies/1/trials")
    for number in range(3):
        assert f"Trial {number}" in trials
    for name in ("confusion_matrix.png", "per_class.csv", "learning_curves.png"):
        assert name in trials, f"artifact {name} not shown on the trial page"
    links = sorted(set(re.findall(r"/artifacts/1/\d+/[0-9a-f-]{36}", trials)))
    assert links, "no artifact links on the trial page"
    kinds = set()
    for link in links:
        with urllib.request.urlopen(dashboard + link, timeout=10) as response:
            body = response.read()
        assert response.status == 200
        kinds.add("png" if body.startswith(b"\x89PNG") else "csv" if body.startswith(b"class,precision")
                  else "npz" if body.startswith(b"PK") else "?")
    assert kinds == {"png", "csv", "npz"}  # npz: the trial's out-of-fold probabilities, for hpo ensemble

    shot = tmp_path / "dashboard-trials.png"
    chromium(profile, "--window-size=1400,1000", f"--screenshot={shot}", f"{dashboard}/dashboard/studies/1/trials")
    assert shot.read_bytes().startswith(b"\x89PNG") and shot.stat().st_size > 20_000
