"""Every command-line entry point over a table of bad inputs, as a user runs them (subprocesses):
exit 2 for bad input (3 for a server that cannot be reached), exactly one line on stderr naming the
flag or file, nothing on stdout, and never a traceback."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from melange.testing.ports import free_port

from ...conftest import EXAMPLES

ARENA = EXAMPLES / "arena-llama2-7b"
BUNDLE = str(ARENA / "bundle.yaml")
MELANGE = [sys.executable, "-m", "melange.solver.cli"]
SOLVE = MELANGE + ["solve"]
ESTIMATE = MELANGE + ["profile", "estimate", "--model", "llama-3-8b", "--gpu", "l4", "--tpot-ms", "120"]
MEASURE = MELANGE + ["profile", "measure", "--model", "llama-3-8b", "--gpu", "l4", "--tpot-ms", "120"]
ROUTER = [sys.executable, "-m", "melange.operator.router"]
PLAYER = [sys.executable, "-m", "melange.solver.metrics.traffic_player"]
SHIPPED = [sys.executable, "-m", "melange.solver.profiling.shipped_profiles"]
CATALOG_SOLVE = SOLVE + ["--model", "llama-3-8b", "--gpus", "l4,a10g", "--rate", "2"]
SWEEP = MELANGE + ["sweep"]
CATALOG_SWEEP = SWEEP + ["--model", "llama-3-8b", "--gpus", "l4,a10g", "--rates", "1,2"]

NOT_UTF8 = b"rate: 4\n# caf\xe9 in Latin-1\n"
REFERENCE = {"gpu_info": {"A": {"cost": 1.0, "tputs": [[1.0, 1.0]]}}, "workload_distribution": [[0.5, 0.5]],
             "total_request_rate": 1.0, "slice_factor": 1}


def reference(**changes) -> str:
    data = json.loads(json.dumps(REFERENCE))
    for key, value in changes.items():
        if value is None:
            del data[key]
        else:
            data[key] = value
    return json.dumps(data)


def a10_bundle() -> dict:
    """The example bundle with its A10G option asking for an `A10` (a GPU no profile is for)."""
    data = yaml.safe_load(Path(BUNDLE).read_text())
    data["profiles"] = [str(ARENA / p) for p in data["profiles"]]
    for option in data["options"]:
        if option["gpu"] == "A10G":
            option["gpu"] = "A10"
    return data


@pytest.fixture(scope="module")
def files(tmp_path_factory) -> dict[str, str]:
    """Bad files on disk, by name; also a folder, a path in a missing folder and a closed port."""
    folder = tmp_path_factory.mktemp("bad-input")
    contents: dict[str, bytes | str] = {
        "latin1.yaml": NOT_UTF8,
        "latin1.csv": b"input_tokens,output_tokens\n10,20\n# \xff\n",
        "latin1.jsonl": b'{"input_tokens": 10, "output_tokens": 20, "note": "\xe9"}\n',
        "table.json": '{"grid": ',
        "max_count.json": reference(gpu_info={"A": {"cost": 1.0, "tputs": [[1.0, 1.0]], "max_count": 2}}),
        "no_slice_factor.json": reference(slice_factor=None),
        "long_tputs.json": reference(gpu_info={"A": {"cost": 1.0, "tputs": [[1.0, 1.0, 1.0]]}}),
        "trace.csv": "input_tokens,output_tokens\n10,20\n300,40\n",
        "other_grid.yaml": yaml.safe_dump({"input_edges": [50, 5000], "output_edges": [50, 5000]}),
        "a10.yaml": yaml.safe_dump(a10_bundle()),
    }
    paths = {}
    for name, content in contents.items():
        path = folder / name
        path.write_bytes(content if isinstance(content, bytes) else content.encode())
        paths[name] = str(path)
    paths["folder"] = str(folder)
    paths["missing_folder_file"] = str(folder / "no-such-folder" / "out.yaml")
    paths["closed"] = f"http://127.0.0.1:{free_port()}"
    return paths


# (command, expected exit status, text the one line must contain: the flag or file it names)
CASES = {
    # melange solve: files
    "bundle missing": (SOLVE + ["{folder}/nosuch.yaml"], 2, "nosuch.yaml: cannot read file"),
    "bundle not UTF-8": (SOLVE + ["{latin1.yaml}"], 2, "latin1.yaml: not UTF-8"),
    "trace not UTF-8": (SOLVE + [BUNDLE, "--trace", "{latin1.csv}", "--rate", "1"], 2, "latin1.csv: not UTF-8"),
    "JSONL trace not UTF-8": (SOLVE + [BUNDLE, "--trace", "{latin1.jsonl}", "--rate", "1"], 2, "latin1.jsonl: not UTF-8"),
    "reference with max_count": (SOLVE + ["{max_count.json}"], 2, "max_count.json.gpu_info.A.max_count: unknown field"),
    "reference without slice_factor": (SOLVE + ["{no_slice_factor.json}"], 2, "lacks slice_factor"),
    "reference tputs too long": (SOLVE + ["{long_tputs.json}"], 2, "long_tputs.json.gpu_info.A.tputs[0]: has 3 entries"),
    "trace on another --grid": (SOLVE + [BUNDLE, "--trace", "{trace.csv}", "--rate", "1", "--grid", "{other_grid.yaml}"],
                                2, "--grid:"),
    "bundle option of a GPU without profile": (SOLVE + ["{a10.yaml}"], 2,
                                               "a10.yaml.options.a10g.gpu: no profile for GPU 'A10'"),
    # melange solve: flags
    "negative rate": (SOLVE + [BUNDLE, "--rate", "-1"], 2, "--rate: must be >= 0"),
    "--price with a bundle": (SOLVE + [BUNDLE, "--price", "l4=2"], 2, "--price: only applies to catalog GPUs"),
    "--tpot-ms with a bundle": (SOLVE + [BUNDLE, "--tpot-ms", "40"], 2, "--tpot-ms: only applies to catalog GPUs"),
    "--catalog with a bundle": (SOLVE + [BUNDLE, "--catalog", "{trace.csv}"], 2, "--catalog: only applies"),
    "--window without --prometheus": (SOLVE + [BUNDLE, "--window", "5m"], 2, "--window: only applies with --prometheus"),
    "--selector without --prometheus": (SOLVE + [BUNDLE, "--selector", "job=x"], 2, "--selector: only applies"),
    "--model-name without --prometheus": (SOLVE + [BUNDLE, "--model-name", "m"], 2, "--model-name: only applies"),
    "--grid without --trace": (SOLVE + [BUNDLE, "--grid", "{other_grid.yaml}"], 2, "--grid: only applies with --trace"),
    "--current without --move-cost": (SOLVE + [BUNDLE, "--current", "l4=1"], 2, "--current: given without --move-cost"),
    "--current unknown option": (SOLVE + [BUNDLE, "--current", "t4=1", "--move-cost", "1"], 2,
                                 "--current: 't4' is not one of the options"),
    "--min-replicas negative": (SOLVE + [BUNDLE, "--min-replicas", "-1"], 2, "--min-replicas: got -1"),
    "--max-spot-share above 1": (SOLVE + [BUNDLE, "--max-spot-share", "2"], 2, "--max-spot-share: got 2"),
    "--price negative": (CATALOG_SOLVE + ["--trace", "{trace.csv}", "--price", "l4=-1"], 2,
                         "--price l4: must be > 0, got -1"),
    "--price not a number": (CATALOG_SOLVE + ["--trace", "{trace.csv}", "--price", "l4=cheap"], 2,
                             "--price: 'cheap' is not a number"),
    "model too large for the GPU": (SOLVE + ["--model", "llama-3-70b", "--gpus", "l4", "--rate", "1", "--trace",
                                             "{trace.csv}"], 2, "try a tensor-parallel option such as l4:8"),
    "a rate beyond the solver's numbers": (SOLVE + [BUNDLE, "--rate", "1e12"], 2,
                                           "no quota, spot share or time limit is set"),
    "unknown flag": (SOLVE + [BUNDLE, "--frobnicate"], 2, "unrecognized arguments: --frobnicate"),
    "Prometheus unreachable": (SOLVE + [BUNDLE, "--prometheus", "{closed}", "--model-name", "m"], 3, "{closed}"),
    # melange sweep
    "sweep without --rates": (SWEEP + [BUNDLE], 2, "the following arguments are required: --rates"),
    "sweep empty --rates": (SWEEP + [BUNDLE, "--rates", ""], 2, "--rates: no rates given"),
    "sweep --rates only commas": (SWEEP + [BUNDLE, "--rates", ",,"], 2, "--rates: no rates given"),
    "sweep zero rate": (SWEEP + [BUNDLE, "--rates", "1,0"], 2, "--rates: rate 0 is not a finite number > 0"),
    "sweep negative rate": (SWEEP + [BUNDLE, "--rates", "-4"], 2, "--rates: rate -4 is not a finite number > 0"),
    "sweep infinite rate": (SWEEP + [BUNDLE, "--rates", "1,inf"], 2, "--rates: rate inf is not a finite number > 0"),
    "sweep rate not a number": (SWEEP + [BUNDLE, "--rates", "1,fast"], 2, "--rates: 'fast' is not a number"),
    "sweep rate twice": (SWEEP + [BUNDLE, "--rates", "2,4,2"], 2, "--rates: rate 2 is given twice"),
    "sweep several SLOs with a bundle": (SWEEP + [BUNDLE, "--rates", "1", "--tpot-ms", "40,120"], 2,
                                         "--tpot-ms: 2 SLOs given, but a bundle's"),
    "sweep one SLO with a bundle": (SWEEP + [BUNDLE, "--rates", "1", "--tpot-ms", "40"], 2,
                                    "--tpot-ms: only applies to catalog GPUs"),
    "sweep SLO not a number": (CATALOG_SWEEP + ["--trace", "{trace.csv}", "--tpot-ms", "40,fast"], 2,
                               "--tpot-ms: 'fast' is not a number"),
    "sweep SLO negative": (CATALOG_SWEEP + ["--trace", "{trace.csv}", "--tpot-ms", "40,-1"], 2,
                           "--tpot-ms: must be > 0, got -1.0"),
    "sweep --plot into a missing folder": (SWEEP + [BUNDLE, "--rates", "1", "--plot", "{missing_folder_file}"], 2,
                                           "--plot: folder"),
    "sweep --plot a folder": (SWEEP + [BUNDLE, "--rates", "1", "--plot", "{folder}"], 2, "--plot: {folder} is a folder"),
    "sweep --output unknown": (SWEEP + [BUNDLE, "--rates", "1", "--output", "xml"], 2, "invalid choice: 'xml'"),
    "sweep --move-cost (a solve's flag)": (SWEEP + [BUNDLE, "--rates", "1", "--move-cost", "1"], 2,
                                           "unrecognized arguments: --move-cost"),
    # melange profile
    "estimate -o into a missing folder": (ESTIMATE + ["-o", "{missing_folder_file}"], 2, "--output: folder"),
    "estimate -o a folder": (ESTIMATE + ["-o", "{folder}"], 2, "--output: {folder} is a folder"),
    "estimate model too large": (MELANGE + ["profile", "estimate", "--model", "llama-3-70b", "--gpu", "l4", "--tpot-ms",
                                            "120"], 2, "needs 141 GB of weights; L4 has 24 GB"),
    "estimate constants not UTF-8": (ESTIMATE + ["--constants", "{latin1.yaml}"], 2, "latin1.yaml: not UTF-8"),
    "estimate no SLO": (MELANGE + ["profile", "estimate", "--model", "llama-3-8b", "--gpu", "l4"], 2, "--tpot-ms"),
    # the output path is checked before the server is contacted: 2, not 3
    "measure -o into a missing folder": (MEASURE + ["--endpoint", "{closed}", "-o", "{missing_folder_file}"], 2,
                                         "--output: folder"),
    "measure server unreachable": (MEASURE + ["--endpoint", "{closed}"], 3, "{closed}"),
    # the router, the traffic player, the shipped-profile generator
    "router table missing": (ROUTER + ["--table", "{folder}/nosuch.json"], 2, "nosuch.json: cannot read file"),
    "router table malformed": (ROUTER + ["--table", "{table.json}"], 2, "table.json:1: not valid JSON"),
    "router table not UTF-8": (ROUTER + ["--table", "{latin1.yaml}"], 2, "latin1.yaml: not UTF-8"),
    "router bad port": (ROUTER + ["--table", "{table.json}", "--port", "http"], 2, "--port"),
    "player negative rate": (PLAYER + ["--rate", "-2"], 2, "--rate: must be >= 0"),
    "player unknown mix": (PLAYER + ["--mix", "video"], 2, "--mix"),
    "shipped --out is a file": (SHIPPED + ["--out", "{trace.csv}"], 2, "--out: {trace.csv} is a file"),
}


def fill(text: str, files: dict[str, str]) -> str:
    for name, value in files.items():
        text = text.replace("{" + name + "}", value)
    return text


@pytest.mark.parametrize("case", sorted(CASES))
def test_bad_input_is_one_line_naming_the_flag_or_file(files, case):
    command, status, expected = CASES[case]
    argv = [fill(arg, files) for arg in command]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
    lines = result.stderr.strip().splitlines()
    assert "Traceback" not in result.stderr, result.stderr
    assert (result.returncode, len(lines)) == (status, 1), result.stderr
    assert fill(expected, files) in lines[0]
    assert result.stdout == ""


def test_version_is_the_package_version():
    from importlib import metadata
    result = subprocess.run(MELANGE + ["--version"], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == f"melange {metadata.version('melange-operator')}"


HELP_COMMANDS = [MELANGE, MELANGE + ["solve"], SWEEP, MELANGE + ["profile"], MELANGE + ["profile", "estimate"],
                 MELANGE + ["profile", "measure"], ROUTER, PLAYER, SHIPPED]


@pytest.mark.parametrize("command", HELP_COMMANDS, ids=lambda c: " ".join(c[2:]))
def test_help_has_a_description_and_states_every_default(command):
    """Every option that takes a value says its default (or that there is none), and the
    description ends with a full stop (not cut mid-sentence)."""
    text = subprocess.run(command + ["--help"], capture_output=True, text=True, check=True).stdout
    body = text.split("\n\n")
    description = " ".join(body[1].split())
    assert not description.startswith(("positional", "options")) and description.endswith("."), description
    for entry in _option_entries(text):
        flags = re.split(r"\s{2,}", entry)[0]
        takes_value = any(not word.startswith("-") for word in flags.replace(",", " ").split())
        if takes_value:
            assert "default" in entry or "(required)" in entry, entry


def _option_entries(text: str) -> list[str]:
    """Each `--flag VALUE  help...` entry of an argparse help text, joined onto one line."""
    entries: list[str] = []
    for line in text.split("options:", 1)[1].splitlines():
        if line.startswith("  -"):
            entries.append(line.strip())
        elif line.startswith("    ") and entries:
            entries[-1] += " " + line.strip()
    return entries


def test_rate_zero_answers_with_the_floors(tmp_path):
    """A zero rate is a valid question: no traffic needs no replica (the options have no floors)."""
    path = tmp_path / "zero.json"
    path.write_text(reference(total_request_rate=0))
    for argv in (SOLVE + [BUNDLE, "--rate", "0"], SOLVE + [str(path)]):
        result = subprocess.run(argv, capture_output=True, text=True)
        assert result.returncode == 0, result.stderr
        assert "no traffic" in result.stdout
        mix = next(line for line in result.stdout.splitlines() if line.startswith("mix "))
        assert mix.split()[1:] == ["0", "0", "0.000"]
    data = yaml.safe_load(Path(BUNDLE).read_text())
    data["workload"]["rate"] = 0
    data["profiles"] = [str(ARENA / p) for p in data["profiles"]]
    (tmp_path / "zero.yaml").write_text(yaml.safe_dump(data))
    result = subprocess.run(SOLVE + [str(tmp_path / "zero.yaml"), "--output", "json"], capture_output=True, text=True)
    assert result.returncode == 0 and json.loads(result.stdout)["cost_per_hour"] == 0
