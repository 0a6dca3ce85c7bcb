"""`melange-operator` (also `python -m melange.operator`): run the LLMService operator.

Flags follow `kopf run`: `-n/--namespace NS` (repeatable) or `-A/--all-namespaces`, `--liveness
URL`, `--verbose`, peering (`--peering NAME`, or `--standalone` for one replica without peering);
and ours: the default Prometheus, the operator's metrics port, the drain period, default images,
the PodMonitors.
The Kubernetes connection comes from the in-cluster service account, else KUBECONFIG (else
~/.kube/config); without either the command says where it looked and exits 2 before kopf starts.
"""
from __future__ import annotations

import argparse
import logging
import re
import sys
from collections.abc import Sequence

import kopf

from melange.operator import handlers  # noqa: F401  (registers the handlers with kopf)
from melange.operator.handlers import OperatorConfig
from melange.operator.kube import Cluster, NoClusterAccess, load_config
from melange.operator.live_workload import PrometheusDefaults
from melange.operator.core.moves import DEFAULT_DRAIN_S
from melange.operator.core.planner import Images, PodMonitorSettings
from melange.solver.errors import InputError
from melange.solver.metrics.prometheus_source import read_bearer_token


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="melange-operator",
                                     description="Keep each LLMService on the cheapest mix of GPU types that "
                                                 "meets its SLO: vLLM pools, router, optional Karpenter NodePools.")
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument("-n", "--namespace", action="append", default=[], metavar="NS",
                       help="watch this namespace (repeatable; glob patterns as in kopf)")
    scope.add_argument("-A", "--all-namespaces", action="store_true", help="watch every namespace (cluster-wide)")
    parser.add_argument("--liveness", metavar="URL", help="health endpoint, e.g. http://0.0.0.0:8080/healthz")
    parser.add_argument("--peering", metavar="NAME", help="kopf peering object name (default: kopf's auto-detection)")
    parser.add_argument("--standalone", action="store_true", help="no peering (only when one replica runs)")
    parser.add_argument("--priority", type=int, default=0, help="peering priority of this replica (default 0)")
    parser.add_argument("--vllm-image", default=Images.vllm, help=f"vLLM image where a spec names none "
                                                                  f"(default {Images.vllm})")
    parser.add_argument("--router-image", default=Images.router, help=f"router image where a spec names none "
                                                                      f"(default {Images.router})")
    parser.add_argument("--prometheus-url", metavar="URL",
                        help="Prometheus for services with workload.source prometheus that name none (default: none)")
    parser.add_argument("--prometheus-token-file", metavar="PATH",
                        help="bearer token for that Prometheus, read once at start (default: none)")
    parser.add_argument("--prometheus-ca-file", metavar="PATH", help="CA bundle for an https Prometheus (default: "
                                                                    "the system's)")
    parser.add_argument("--metrics-port", type=int, default=9090,
                        help="serve the operator's own metrics on this port at /metrics; 0: off (default 9090)")
    parser.add_argument("--drain", type=float, default=DEFAULT_DRAIN_S, metavar="SECONDS",
                        help="after switching the routing, wait at most this long for the routers' requests in flight "
                             "to the pools a move removes before scaling them down, counted from every router serving "
                             "the new table (default: the pools' terminationGracePeriodSeconds); the drain ends as "
                             "soon as every ready router reports none")
    parser.add_argument("--pod-monitors", choices=("auto", "on", "off"), default="auto",
                        help="a Prometheus Operator PodMonitor per service for its pools and router: auto (where "
                             "the monitoring.coreos.com/v1 CRDs are installed), on (always; the operator stops if "
                             "they are not), off (default auto)")
    parser.add_argument("--pod-monitor-label", action="append", default=[], metavar="KEY=VALUE",
                        help="a label on every PodMonitor, for the Prometheus that selects them (repeatable; "
                             "kube-prometheus-stack selects release=<its release name>)")
    parser.add_argument("--pod-monitor-interval", metavar="DURATION",
                        help="scrape interval of the PodMonitors, e.g. 15s (default: the Prometheus's own)")
    parser.add_argument("--max-passes", type=int, default=None, metavar="N",
                        help="reconcile passes running at once, at most (default: one per CPU the operator may "
                             "use); more due passes wait for one to finish")
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    return parser


# Kubernetes label syntax (k8s.io/apimachinery validation: a qualified name, a value of at most 63
# characters) and the Prometheus Operator's duration pattern (monitoring.coreos.com/v1 Duration).
LABEL_NAME = re.compile(r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?"
                        r"[A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?$")
LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)?$")
PROMETHEUS_DURATION = re.compile(r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?"
                                 r"(([0-9]+)ms)?)$")


def pod_monitor_settings(labels: Sequence[str], interval: str | None) -> PodMonitorSettings:
    """The PodMonitor flags, checked: a bad label or duration is refused before anything runs."""
    pairs = []
    for item in labels:
        key, equals, value = item.partition("=")
        if not equals or not LABEL_NAME.match(key) or len(key.rpartition("/")[0]) > 253 \
                or not LABEL_VALUE.match(value):
            raise ValueError(f"--pod-monitor-label {item!r}: expected KEY=VALUE with a Kubernetes label name "
                             f"([prefix/]name, name at most 63 characters of [A-Za-z0-9-_.]) and a value of at most "
                             f"63 such characters")
        pairs.append((key, value))
    if interval is not None and (not interval or not PROMETHEUS_DURATION.match(interval)):
        raise ValueError(f"--pod-monitor-interval {interval!r}: expected a Prometheus duration such as 15s, 1m or 1m30s")
    return PodMonitorSettings(tuple(sorted(dict(pairs).items())), interval)


def main(argv: Sequence[str] | None = None) -> int:
    """Run until SIGINT/SIGTERM."""
    args = build_parser().parse_args(argv)
    if not args.namespace and not args.all_namespaces:
        build_parser().error("give -n/--namespace NS (repeatable) or -A/--all-namespaces")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        token = read_bearer_token(args.prometheus_token_file)
    except InputError as error:
        build_parser().error(str(error))
    if args.metrics_port < 0 or args.metrics_port > 65535 or (args.drain is not None and args.drain < 0):
        build_parser().error("--metrics-port must be 0-65535 and --drain >= 0")
    try:
        pod_monitor = pod_monitor_settings(args.pod_monitor_label, args.pod_monitor_interval)
    except ValueError as error:
        build_parser().error(str(error))
    config = OperatorConfig(images=Images(vllm=args.vllm_image, router=args.router_image),
                            prometheus=PrometheusDefaults(args.prometheus_url, token, args.prometheus_ca_file),
                            drain_s=args.drain, metrics_port=args.metrics_port or None,
                            pod_monitors=args.pod_monitors, pod_monitor=pod_monitor)
    if args.max_passes is not None:
        if args.max_passes < 1:
            build_parser().error(f"--max-passes: got {args.max_passes}, expected an integer >= 1")
        config.max_passes = args.max_passes
    try:  # checked before kopf starts, which would retry a missing connection every minute
        config.cluster = Cluster(load_config())
    except NoClusterAccess as error:
        print(f"melange-operator: {error}", file=sys.stderr)
        raise SystemExit(2) from None
    memo = kopf.Memo(config=config)
    kopf.run(clusterwide=args.all_namespaces, namespaces=args.namespace, liveness_endpoint=args.liveness,
             standalone=args.standalone or None, peering_name=args.peering, priority=args.priority, memo=memo)
    return 0


if __name__ == "__main__":
    sys.exit(main())
