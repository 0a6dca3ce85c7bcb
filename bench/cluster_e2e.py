"""The real-cluster test ground: how long the local control plane takes to start, and the
end-to-end suite's wall time.

    python bench/cluster_e2e.py [--starts 3] [--no-suite]

Starts `melange.testing.cluster.LocalCluster` `--starts` times (API ready; every component up and
the default ServiceAccount made; plus four GPU node types Ready), then runs `pytest tests/cluster`
once and times it. The binaries are built first if missing (e2e/build.sh; that time is printed
apart, as it happens once per set of versions).
"""
from __future__ import annotations

import argparse
import statistics
import subprocess
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, print_table  # noqa: E402

from melange.testing.cluster import LocalCluster, build_binaries  # noqa: E402

NODES = {"m5.xlarge": 1, "g6.xlarge": 1, "g5.xlarge": 1, "p4de.24xlarge": 1, "p5.48xlarge": 1}


def start_once(bin_dir: Path) -> tuple[float, float, float]:
    """(API ready, everything up, GPU nodes Ready) in seconds from the start."""
    begin = time.monotonic()
    cluster = LocalCluster(bin_dir).start()
    try:
        cluster.add_nodes(NODES)
        cluster.kubectl("wait", "--for=condition=Ready", "node", "--all", "--timeout=60s")
        nodes_ready = time.monotonic() - begin
        return cluster.started_s["api"], cluster.started_s["all"], nodes_ready
    finally:
        cluster.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--starts", type=int, default=3, help="control-plane starts to time (default 3)")
    parser.add_argument("--no-suite", action="store_true", help="skip timing the end-to-end suite")
    args = parser.parse_args()

    began = time.monotonic()
    bin_dir = build_binaries()
    print(f"binaries: {bin_dir} ({time.monotonic() - began:.1f} s to find or build)\n")

    runs = [start_once(bin_dir) for _ in range(args.starts)]
    rows = []
    for label, k in (("API ready (etcd + kube-apiserver)", 0), ("all components up", 1),
                     ("+ 5 KWOK nodes Ready", 2)):
        values = [run[k] for run in runs]
        rows.append([label, f"{statistics.median(values):.1f}", f"{min(values):.1f}", f"{max(values):.1f}"])
    print_table(["control plane start-up (s)", "median", "min", "max"], rows)

    if not args.no_suite:
        began = time.monotonic()
        # the venv's pytest script: `python -m` from the checkout root would shadow the operator module
        result = subprocess.run([str(Path(sys.executable).with_name("pytest")), "tests/cluster", "-q"],
                                cwd=ROOT)
        print()
        print_table(["end-to-end suite", "wall (s)", "exit"],
                    [["pytest tests/cluster", f"{time.monotonic() - began:.0f}", result.returncode]])


if __name__ == "__main__":
    main()
