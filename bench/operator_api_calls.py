"""API calls the operator makes per service per `reallocation.interval`, on a real API server.

    python bench/operator_api_calls.py [--services 3] [--interval 20] [--intervals 3]

Starts the local control plane (`melange.testing.cluster`, binaries built once by e2e/build.sh) with
KWOK GPU nodes, the real `melange-operator` process, and `--services` copies of the Arena example.
Two states are measured from the API server's audit log over the same `--intervals` intervals:
- steady: the services in namespace `bench`, every one Ready, no move, traffic unchanged;
- pending: one service in namespace `bench-pending` whose pools can never schedule (a GPU product no
  node has), so it stays not Ready (a polling operator would pass every tick there).
The operator's calls are those whose user agent is kopf's or the `kubernetes` client's, counted by the
namespace they name; watches are long-running (one per kind for the whole operator) and left out.
"""
from __future__ import annotations

import argparse
import collections
import sys
import tempfile
import time
from pathlib import Path

import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
from common import ROOT, print_table  # noqa: E402

from melange.operator.core.status import condition_status  # noqa: E402
from melange.testing.cluster import LocalCluster, build_binaries  # noqa: E402
from melange.testing.operator_process import OperatorProcess  # noqa: E402
from melange.testing.ports import free_port  # noqa: E402

NODES = {"m5.xlarge": 2, "g6.xlarge": 3, "g6.12xlarge": 1, "p4de.24xlarge": 1}
OPERATOR_AGENTS = ("kopf/", "OpenAPI-Generator/")


def service(name: str, interval_s: int, pending: bool = False) -> dict:
    manifest = yaml.safe_load((ROOT / "examples" / "operator" / "arena-llama2-7b.yaml").read_text())
    manifest["metadata"] = {"name": name, "namespace": "bench-pending" if pending else "bench"}
    spec = manifest["spec"]
    spec["router"] = {"replicas": 1}
    spec["reallocation"] = {"targetUtilisation": 1.0, "interval": f"{interval_s}s"}
    spec["gpuOptions"] = [o for o in spec["gpuOptions"] if o["name"] in ("l4", "a100-80gb")]
    if pending:
        for option in spec["gpuOptions"]:
            option["nodeSelector"] = {"nvidia.com/gpu.product": "NVIDIA-B200"}
    return manifest


def wait(check, what: str, timeout_s: float = 180.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not check():
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out waiting for {what}")
        time.sleep(0.5)


def ready(cluster: LocalCluster, names: list[str]) -> bool:
    items = {s["metadata"]["name"]: s for s in cluster.get("llmservices", namespace="bench")["items"]}
    return all(condition_status(items.get(n, {}).get("status"), "Ready") == "True"
               and not items[n]["status"].get("move") for n in names)


def operator_calls(cluster: LocalCluster, start: int) -> tuple[dict[str, collections.Counter], int]:
    """The operator's calls after audit event `start` by namespace, then by 'verb resource'; and the
    audit log's new length."""
    events = cluster.audit_events()
    calls: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
    for event in events[start:]:
        if not str(event.get("userAgent", "")).startswith(OPERATOR_AGENTS) or event["verb"] == "watch":
            continue
        ref = event.get("objectRef") or {}
        resource = ref.get("resource", "?") + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        calls[ref.get("namespace") or "-"][f"{event['verb']} {resource}"] += 1
    return calls, len(events)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--services", type=int, default=3)
    parser.add_argument("--interval", type=int, default=20, help="each service's reallocation.interval (s)")
    parser.add_argument("--intervals", type=int, default=3, help="intervals measured per state")
    args = parser.parse_args()

    cluster = LocalCluster(build_binaries()).start()
    folder = Path(tempfile.mkdtemp(prefix="melange-bench-calls-"))
    operator = None
    try:
        cluster.add_nodes(NODES)
        cluster.kubectl("apply", "--server-side", "-f", str(ROOT / "crds" / "llmservice.yaml"))
        cluster.kubectl("wait", "--for=condition=Established", "crd/llmservices.melange.ai", "--timeout=60s")
        cluster.kubectl("create", "namespace", "bench")
        health = free_port()
        operator = OperatorProcess(["-A", "--standalone", f"--liveness=http://127.0.0.1:{health}/healthz",
                                    "--metrics-port=0", "--drain=2"], cluster.kubeconfig, folder / "operator.log",
                                   health).start()
        names = [f"svc-{k}" for k in range(args.services)]
        cluster.apply([service(n, args.interval) for n in names])
        wait(lambda: ready(cluster, names), "every service Ready")
        cluster.kubectl("create", "namespace", "bench-pending")
        cluster.apply([service("svc-pending", args.interval, pending=True)])
        time.sleep(10)  # the settling passes of both
        _, start = operator_calls(cluster, 0)
        time.sleep(args.interval * args.intervals)
        calls, _ = operator_calls(cluster, start)
        rows = []
        for label, namespace, count in (("steady: Ready, no move", "bench", args.services),
                                        ("pods Pending (never ready)", "bench-pending", 1)):
            found = calls.get(namespace, collections.Counter())
            per = sum(found.values()) / count / args.intervals
            detail = ", ".join(f"{k} {v / count / args.intervals:.1f}" for k, v in sorted(found.items()))
            rows.append([label, count, f"{args.interval} s", f"{per:.1f}", detail])
        print_table(["state", "services", "interval", "calls/service/interval", "by call"], rows)
    finally:
        if operator is not None:
            operator.stop()
        cluster.stop()


if __name__ == "__main__":
    main()
