"""`melange-operator` (also `python -m melange.operator`): run the LLMService operator.

Flags follow `kopf run`: `-n/--namespace NS` (repeatable) or `-A/--all-namespaces`, `--liveness
URL`, `--verbose`, peering (`--peering NAME`, or `--standalone` for one replica without peering).
The Kubernetes connection comes from the in-cluster service account, else KUBECONFIG.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import kopf

from melange.operator import handlers  # noqa: F401  (registers the handlers with kopf)
from melange.operator.handlers import OperatorConfig
from melange.operator.planner import Images


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
    parser.add_argument("--verbose", "-v", action="store_true", help="debug logging")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run until SIGINT/SIGTERM."""
    args = build_parser().parse_args(argv)
    if not args.namespace and not args.all_namespaces:
        build_parser().error("give -n/--namespace NS (repeatable) or -A/--all-namespaces")
    logging.basicConfig(level=logging.DEBUG if args.verbose else logging.INFO,
                        format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    memo = kopf.Memo(config=OperatorConfig(images=Images(vllm=args.vllm_image, router=args.router_image)))
    kopf.run(clusterwide=args.all_namespaces, namespaces=args.namespace, liveness_endpoint=args.liveness,
             standalone=args.standalone or None, peering_name=args.peering, priority=args.priority, memo=memo)
    return 0


if __name__ == "__main__":
    sys.exit(main())
