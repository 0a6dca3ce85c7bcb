"""`melange plan FILE`: what the operator would deploy for an LLMService manifest, no cluster needed.

The shell around `core/dry_run.py`: it reads the manifest, the CRD and the ConfigMap files, and prints
the allocation (the table of `melange solve`), or `-o json` (the allocation, the status the operator
would write, the solve, the objects by kind and name), or `-o yaml` (every object the operator would
apply, as a multi-document stream). It lives in the operator package, which it needs, and `melange`
finds it through the `melange.commands` entry point (as `melange demo`): `melange.solver` never
imports the operator.
"""
from __future__ import annotations

import argparse
import importlib.util
import json
import sys
import time
from pathlib import Path
from typing import Any

import yaml

from melange.solver.checks import number, read_text
from melange.solver.errors import InputError
from melange.solver.inputs import load_document

OUTPUTS = ("table", "yaml", "json")
# The LLMService CRD, shipped in the package (a link to the checkout's crds/ that a wheel holds as a file).
CRD_FILE = Path(__file__).resolve().parent / "crds" / "llmservice.yaml"
YAML_HEADER = ("# What melange-operator would apply for {service} on its first pass ({summary}).\n"
               "# ownerReferences are left out: they name the LLMService's uid, which exists only once the\n"
               "# API server has created it (with a made-up one the garbage collector would delete these).\n")


def add_parser(commands: argparse._SubParsersAction) -> None:
    """Register `melange plan` (called by `melange` through the `melange.commands` entry point)."""
    parser = commands.add_parser(
        "plan", help="what the operator would deploy for an LLMService manifest, no cluster needed",
        description="Check an LLMService manifest as the API server does (the CRD's schema, defaults and CEL rules) "
                    "and as the operator does (its spec reader), solve it as the operator's first pass would, and "
                    "print the allocation; -o yaml prints every object the operator would apply, -o json the "
                    "allocation, status and objects. Exit status 2: a manifest the API server or the operator "
                    "would refuse (one line naming the field), or bad flags.")
    parser.add_argument("file", type=Path, metavar="FILE", help="an LLMService manifest (YAML or JSON)")
    parser.add_argument("--rate", type=float, help="req/s to plan for: replaces spec.workload.static.rate; needed "
                                                   "for source prometheus, whose size mix then comes from "
                                                   "spec.workload.static (default: the manifest's rate)")
    parser.add_argument("--configmap", action="append", default=[], metavar="NAME=FILE",
                        help="a ConfigMap the manifest references (profile configMapRef, traceConfigMapRef): a "
                             "ConfigMap manifest, or a file whose name is the key (as kubectl create configmap "
                             "NAME --from-file=FILE); repeatable")
    parser.add_argument("--pod-monitor", action="store_true",
                        help="also plan the service's PodMonitor, as the operator does where the Prometheus "
                             "Operator's CRDs are installed")
    parser.add_argument("-o", "--output", choices=OUTPUTS, default="table", help="table (default), yaml or json")
    parser.set_defaults(handler=run)


def config_maps(values: list[str]) -> dict[tuple[str, str], str]:
    """`NAME=FILE` flags as ConfigMap data by (name, key)."""
    data: dict[tuple[str, str], str] = {}
    for value in values:
        name, sep, file = value.partition("=")
        if not sep or not name or not file:
            raise InputError("--configmap", f"{value!r} is not NAME=FILE", "NAME=FILE, e.g. profiles=a100.yaml")
        path = Path(file)
        if path.is_dir():
            raise InputError("--configmap", f"{file} is a folder", "one file per --configmap")
        document = None
        if path.suffix.lower() in (".yaml", ".yml", ".json"):
            try:
                document = yaml.safe_load(read_text(path))
            except yaml.YAMLError:
                document = None
        if isinstance(document, dict) and document.get("kind") == "ConfigMap":
            found = (document.get("metadata") or {}).get("name")
            if found != name:
                raise InputError(f"{file}.metadata.name", f"{found!r}, but --configmap names it {name!r}",
                                 f"the ConfigMap's own name, {found!r}")
            for key, text in (document.get("data") or {}).items():
                data[(name, str(key))] = str(text)
        else:
            data[(name, path.name)] = read_text(path)
    return data


def _crd() -> dict[str, Any]:
    if not CRD_FILE.is_file():
        raise InputError("melange plan", f"the LLMService CRD is not at {CRD_FILE}",
                         "an install of melange-operator that ships it: reinstall the package")
    return yaml.safe_load(CRD_FILE.read_text())


def objects_summary(objects: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [{"apiVersion": o["apiVersion"], "kind": o["kind"], "name": o["metadata"]["name"],
             **({"namespace": o["metadata"]["namespace"]} if o["metadata"].get("namespace") else {})}
            for o in objects]


def without_owner(obj: dict[str, Any]) -> dict[str, Any]:
    """The object without its owner references (see YAML_HEADER)."""
    metadata = {k: v for k, v in obj["metadata"].items() if k != "ownerReferences"}
    return {**obj, "metadata": metadata}


def run(args: argparse.Namespace) -> int:
    """Check, solve and print (table, yaml or json)."""
    from melange.operator.core.dry_run import first_pass
    from melange.operator.core.planner import PodMonitorSettings
    from melange.operator.core.problem import Inputs
    from melange.solver.cli.solve_command import describe_assumptions, render_table
    from melange.solver.profiling.catalog import shipped_catalog

    if args.rate is not None:
        number(args.rate, "--rate", minimum=0)
    missing = [name for module, name in (("jsonschema", "jsonschema"), ("celpy", "cel-python"))
               if importlib.util.find_spec(module) is None]
    if missing:
        raise InputError("melange plan", f"{' and '.join(missing)} not installed", "pip install -e '.[plan]'")
    config = config_maps(args.configmap)
    manifest = load_document(args.file)
    inputs = Inputs(config, shipped_catalog(), PodMonitorSettings() if args.pod_monitor else None)
    dry = first_pass(manifest, str(args.file), _crd(), inputs, rate=args.rate, now_s=time.time())
    outcome = dry.outcome
    objects = outcome.desired or []
    service = f"LLMService {dry.owner.namespace}/{dry.owner.name}"
    if args.output == "json":
        document = {"service": {"name": dry.owner.name, "namespace": dry.owner.namespace},
                    "mode": dry.spec.mode, "routingMode": dry.spec.routing_mode,
                    "allocation": outcome.status["allocation"], "costPerHour": outcome.status["costPerHour"],
                    "status": {k: v for k, v in outcome.status.items() if k != "conditions" and v is not None},
                    "solve": outcome.report.to_dict(), "objects": objects_summary(objects)}
        json.dump(document, sys.stdout, indent=2)
        sys.stdout.write("\n")
    elif args.output == "yaml":
        summary = describe_assumptions(outcome.report) if objects else \
            "recommend mode: it writes only status, no object"
        sys.stdout.write(YAML_HEADER.format(service=service, summary=summary))
        sys.stdout.write(yaml.safe_dump_all([without_owner(o) for o in objects], sort_keys=False,
                                            explicit_start=True) if objects else "")
    else:
        sys.stdout.write(render_table(outcome.report, outcome.problem))
        kinds: dict[str, int] = {}
        for obj in objects:
            kinds[obj["kind"]] = kinds.get(obj["kind"], 0) + 1
        what = ", ".join(f"{n} {kind}" for kind, n in kinds.items())
        sys.stdout.write(f"{service}, {dry.spec.mode} mode: " + (
            f"the operator would apply {what} (melange plan -o yaml {args.file} lists them)\n" if objects else
            "the operator writes this allocation into status only (recommend mode), no object\n"))
    return 0
