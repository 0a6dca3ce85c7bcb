"""`melange demo` end to end, shortened: the allocation changes when the traffic switches, the final
objects are left as YAML, and nothing it started is left running."""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

pytestmark = pytest.mark.integration


def processes_mentioning(text: str) -> list[str]:
    """Command lines of running processes that mention `text` (e.g. a temporary folder of theirs)."""
    found = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                cmdline = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(cmdline)
    return found


@pytest.mark.skipif(shutil.which("prometheus") is None, reason="needs Debian's prometheus (./run-tests.sh installs it)")
def test_the_demo_follows_the_switch_and_cleans_up(tmp_path):
    out = tmp_path / "objects"
    scratch = tmp_path / "tmp"  # every temporary folder the demo makes (Prometheus's among them) lies here
    scratch.mkdir()
    result = subprocess.run([sys.executable, "-m", "melange.solver.cli", "demo", "--duration", "70",
                             "--switch-after", "20", "--window", "10", "--plain", "--output-dir", str(out)],
                            capture_output=True, text=True, timeout=300, cwd=tmp_path,
                            env={**os.environ, "TMPDIR": str(scratch)})
    assert result.returncode == 0, result.stderr[-2000:]
    summary = result.stdout.split("workload read from", 1)[1]
    assert "a real Prometheus" in summary
    mixes = [line.split(" s  ", 1)[1] for line in summary.splitlines() if " s  " in line]
    assert len(mixes) >= 2 and mixes[0] != mixes[-1], result.stdout  # the allocation changed after the switch
    assert "h100" not in mixes[0] and "h100" in mixes[-1], result.stdout  # long documents need the H100s
    services = list(yaml.safe_load_all((out / "llmservices.yaml").read_text()))
    assert services[0]["status"]["allocation"] and (out / "deployments.yaml").is_file()
    events = [e["reason"] for e in yaml.safe_load_all((out / "events.yaml").read_text())]
    assert "MoveStarted" in events and "Reallocated" in events
    assert processes_mentioning(str(scratch)) == []  # no Prometheus or other process left behind
    assert [p for p in scratch.iterdir() if p.name.startswith("melange-prometheus-")] == []


def test_without_prometheus_the_note_comes_first_and_the_static_generation_is_explained(tmp_path):
    """No prometheus binary on PATH: the note is the first line (not in the summary minutes later), and
    the summary says why the final LLMService is `source: static` at the generation it has."""
    out = tmp_path / "objects"
    bare = tmp_path / "bin"  # a PATH without prometheus
    bare.mkdir()
    result = subprocess.run([sys.executable, "-m", "melange.solver.cli", "demo", "--duration", "8", "--window", "5",
                             "--switch-after", "4", "--plain", "--output-dir", str(out)],
                            capture_output=True, text=True, timeout=120, cwd=tmp_path,
                            env={**os.environ, "PATH": str(bare)})
    assert result.returncode == 0, result.stderr[-2000:]
    lines = result.stdout.splitlines()
    assert lines[0].startswith("note: no prometheus binary found"), result.stdout
    assert sum("no prometheus binary" in line for line in lines) == 1, result.stdout
    service = next(yaml.safe_load_all((out / "llmservices.yaml").read_text()))
    assert service["spec"]["workload"]["source"] == "static"
    generation = service["metadata"]["generation"]
    summary = result.stdout.split("workload read from", 1)[1]
    explained = [line for line in summary.splitlines() if "source: static" in line]
    assert explained and f"generation {generation}" in explained[0], result.stdout
