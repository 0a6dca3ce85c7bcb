"""`melange sweep`: each rate's row against its own `melange solve` run, the JSON and CSV shapes,
several SLOs on the catalog path, the plot file, and the progress bar."""
from __future__ import annotations

import csv
import io
import json
import struct
import subprocess
import sys

import pytest
import yaml

from melange.solver.cli.progress import ProgressBar

from .run_cli import run

from ...conftest import EXAMPLES

ARENA = EXAMPLES / "arena-llama2-7b"
BUNDLE = ARENA / "bundle.yaml"
RATES = (1, 2, 4, 8, 16, 32)
OPTIONS = ("l4", "a10g", "a100-80gb", "h100")
CATALOG = ("--model", "llama-3-8b", "--gpus", "l4,a10g,a100", "--workload", ARENA / "workload.yaml")
PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def solve_json(capsys, *argv) -> dict:
    """`melange solve ARGV --output json`, run on its own."""
    code, out, err = run(capsys, "solve", *argv, "--output", "json")
    assert code == 0, err
    return json.loads(out)


def composition(replicas: dict[str, int]) -> str:
    return " + ".join(f"{n} {name}" for name, n in replicas.items() if n)


def table_rows(out: str) -> dict[float, dict]:
    """The sweep table's rows by rate; read from both ends, as the mix column holds spaces."""
    rows = {}
    for line in out.splitlines():
        words = line.split()
        if not words or not words[0].replace(".", "").isdigit() or len(words) < 2 + len(OPTIONS) + 3:
            continue
        tail = words[-(len(OPTIONS) + 3):]
        rows[float(words[0])] = {"mix_cost": words[1], "mix": " ".join(words[2:-(len(OPTIONS) + 3)]),
                                 "single": dict(zip(OPTIONS, tail[:len(OPTIONS)])), "best": tail[-3],
                                 "saves": tail[-2], "vs_worst": tail[-1]}
    return rows


def test_table_matches_a_solve_per_rate(capsys):
    code, out, err = run(capsys, "sweep", BUNDLE, "--rates", ",".join(map(str, RATES)))
    assert code == 0, err
    rows = table_rows(out)
    assert sorted(rows) == list(RATES)
    for rate in RATES:
        alone = solve_json(capsys, BUNDLE, "--rate", rate)
        row = rows[rate]
        assert row["mix_cost"] == f"{alone['cost_per_hour']:.3f}"
        assert row["mix"] == composition(alone["replicas"])
        assert row["single"] == {name: f"{cost:.3f}" for name, cost in alone["single_type"].items()}
        assert row["best"] == alone["best_single_type"]["option"]
        assert row["saves"] == f"{alone['savings_vs_best_single_percent']:.2f}%"
        assert row["vs_worst"] == f"{alone['savings_vs_worst_single_percent']:.2f}%"
    # The paper's Table 3 (Arena, 120 ms) at rates 1 and 4, from its public profiles: 1 L4 + 1 A10G
    # at $1.71/h and 1 L4 + 1 A100 at $4.37/h, 77.25% and 41.86% below H100-only.
    assert (rows[1]["mix"], rows[1]["mix_cost"], rows[1]["vs_worst"]) == ("1 l4 + 1 a10g", "1.710", "77.25%")
    assert (rows[4]["mix"], rows[4]["mix_cost"], rows[4]["vs_worst"]) == ("1 l4 + 1 a100-80gb", "4.370", "41.86%")
    assert "SLO mean TPOT <= 120 ms" in out and "model llama-2-7b" in out


def test_json_is_only_json_and_matches_a_solve_per_rate(capsys):
    """Run as a user runs it (a subprocess): HiGHS must not print its banner into the JSON."""
    result = subprocess.run([sys.executable, "-m", "melange.solver.cli", "sweep", str(BUNDLE), "--rates", "1,4,2",
                             "--output", "json"], capture_output=True, text=True, check=True)
    document = json.loads(result.stdout)
    assert result.stderr == ""
    assert (document["model"], document["mode"], document["options"]) == ("llama-2-7b", "paper", list(OPTIONS))
    assert document["grid"]["input_edges"] == [25, 100, 250, 500, 1000, 2000]
    assert [p["rate"] for p in document["points"]] == [1.0, 4.0, 2.0]  # the order given
    for point in document["points"]:
        alone = solve_json(capsys, BUNDLE, "--rate", point["rate"])
        assert set(point) == set(SWEEP_FIELDS)
        assert {key: point[key] for key in SWEEP_FIELDS} == {key: alone[key] for key in SWEEP_FIELDS}


SWEEP_FIELDS = ("rate", "slo", "status", "cost_per_hour", "replicas", "gap", "single_type", "single_type_replicas",
                "best_single_type", "worst_single_type", "savings_vs_best_single_percent",
                "savings_vs_worst_single_percent")


def test_csv_has_a_row_per_rate_with_the_json_values(capsys):
    code, out, _ = run(capsys, "sweep", BUNDLE, "--rates", "1,8", "--output", "csv")
    assert code == 0
    rows = list(csv.DictReader(io.StringIO(out)))
    assert list(rows[0]) == (["tpot_ms", "ttft_ms", "rate", "status", "cost_per_hour"]
                             + [f"{name}_replicas" for name in OPTIONS]
                             + [f"{name}_alone_cost_per_hour" for name in OPTIONS]
                             + ["best_single_type", "best_single_cost_per_hour", "savings_vs_best_single_percent",
                                "savings_vs_worst_single_percent"])
    assert len(rows) == 2
    for row in rows:
        alone = solve_json(capsys, BUNDLE, "--rate", row["rate"])
        assert (float(row["tpot_ms"]), row["ttft_ms"], row["status"]) == (120.0, "", "optimal")
        assert float(row["cost_per_hour"]) == pytest.approx(alone["cost_per_hour"])
        assert {name: int(row[f"{name}_replicas"]) for name in OPTIONS} == alone["replicas"]
        assert {name: float(row[f"{name}_alone_cost_per_hour"]) for name in OPTIONS} == \
            pytest.approx(alone["single_type"])
        assert row["best_single_type"] == alone["best_single_type"]["option"]
        assert float(row["savings_vs_best_single_percent"]) == pytest.approx(alone["savings_vs_best_single_percent"])


def test_several_slos_on_the_catalog_path_match_a_solve_each(capsys):
    """One sweep per --tpot-ms, each with profiles for its own SLO, as `melange solve --tpot-ms` makes them."""
    code, out, err = run(capsys, "sweep", *CATALOG, "--rates", "2,16", "--tpot-ms", "40,120", "--output", "json")
    assert code == 0, err
    points = json.loads(out)["points"]
    assert [(p["slo"]["tpot_ms"], p["rate"]) for p in points] == [(40.0, 2.0), (40.0, 16.0), (120.0, 2.0),
                                                                  (120.0, 16.0)]
    for point in points:
        alone = solve_json(capsys, *CATALOG, "--rate", point["rate"], "--tpot-ms", point["slo"]["tpot_ms"])
        assert {key: point[key] for key in SWEEP_FIELDS} == {key: alone[key] for key in SWEEP_FIELDS}
    assert points[0]["cost_per_hour"] > points[2]["cost_per_hour"]  # the tighter SLO costs more
    code, out, _ = run(capsys, "sweep", *CATALOG, "--rates", "2", "--tpot-ms", "40,120")
    assert "SLO mean TPOT <= 40 ms" in out and "SLO mean TPOT <= 120 ms" in out
    assert "note: some profiles are estimates from specs, not measurements" in out


L4_ONLY = (*CATALOG[:3], "l4", *CATALOG[4:])


def test_an_slo_the_gpus_cannot_meet_keeps_the_other_slos_rows_and_marks_its_own(capsys):
    """L4 alone cannot meet a 40 ms TPOT (the catalog estimates no L4 rate for the longest inputs) but
    meets 120 ms: the 120 ms rows are those of `melange solve`, the 40 ms rows say infeasible and why."""
    code, out, err = run(capsys, "sweep", *L4_ONLY, "--rates", "1,4", "--tpot-ms", "40,120", "--output", "json")
    assert code == 0, err
    document = json.loads(out)
    points = document["points"]
    assert [(p["slo"]["tpot_ms"], p["rate"], p["status"]) for p in points] == [
        (40.0, 1.0, "infeasible"), (40.0, 4.0, "infeasible"), (120.0, 1.0, "optimal"), (120.0, 4.0, "optimal")]
    for point in points[:2]:
        assert point["cost_per_hour"] is None and point["replicas"] == {"l4": 0}
        assert point["single_type"] == {"l4": None} and point["savings_vs_best_single_percent"] is None
    for point in points[2:]:
        alone = solve_json(capsys, *L4_ONLY, "--rate", point["rate"], "--tpot-ms", 120)
        assert {key: point[key] for key in SWEEP_FIELDS} == {key: alone[key] for key in SWEEP_FIELDS}
    assert any("TPOT <= 40 ms" in note and "no GPU option can serve" in note for note in document["notes"])
    code, out, err = run(capsys, "sweep", *L4_ONLY, "--rates", "1,4", "--tpot-ms", "40,120")
    assert code == 0, err
    tight, loose = out.split("SLO mean TPOT <= 120 ms")
    assert [line.split()[2] for line in tight.splitlines() if line.split()[:1] in (["1"], ["4"])] == ["infeasible"] * 2
    assert "infeasible" not in loose.split("\n\n")[0]
    assert "note: SLO mean TPOT <= 40 ms: infeasible: no GPU option can serve" in out
    code, out, err = run(capsys, "sweep", *L4_ONLY, "--rates", "1,4", "--tpot-ms", "40,120", "--output", "csv")
    assert code == 0, err
    assert [row["status"] for row in csv.DictReader(io.StringIO(out))] == ["infeasible"] * 2 + ["optimal"] * 2


def test_a_sweep_nothing_can_serve_is_one_line_and_exit_2(capsys):
    code, out, err = run(capsys, "sweep", *L4_ONLY, "--rates", "1", "--tpot-ms", "20,40")
    assert code == 2 and out == ""
    assert err.startswith("melange: error: --tpot-ms 20: infeasible: no GPU option can serve") and err.count("\n") == 1


def test_a_rate_beyond_the_quotas_is_reported_not_fatal(capsys, tmp_path):
    """With at most one replica per option (4 GPUs), rate 1 is served and rate 32 cannot be."""
    data = yaml.safe_load(BUNDLE.read_text())
    data["profiles"] = [str(ARENA / p) for p in data["profiles"]]
    for option in data["options"]:
        option["max_replicas"] = 1
    path = tmp_path / "quota.yaml"
    path.write_text(yaml.safe_dump(data))
    code, out, err = run(capsys, "sweep", path, "--rates", "1,32", "--output", "json")
    assert code == 0, err
    first, last = json.loads(out)["points"]
    assert first["status"] == "optimal" and first["cost_per_hour"] == pytest.approx(1.71)
    assert last["status"] == "infeasible" and last["cost_per_hour"] is None
    assert last["savings_vs_best_single_percent"] is None
    code, out, _ = run(capsys, "sweep", path, "--rates", "1,32")
    assert table_rows(out)[32]["mix_cost"] == "-" and table_rows(out)[32]["mix"] == "infeasible"


def png_size(data: bytes) -> tuple[int, int]:
    """Width and height from a PNG's IHDR chunk (the first chunk, right after the signature)."""
    assert data[:8] == PNG_MAGIC and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


def test_plot_is_a_png_with_content(capsys, tmp_path):
    matplotlib = pytest.importorskip("matplotlib", reason="matplotlib not installed: pip install -e '.[plot]'")
    matplotlib.use("Agg")
    import matplotlib.image
    import matplotlib.pyplot as plt
    from melange.solver.cli.sweep_plot import MIX_COLOUR, OPTION_COLOURS
    path = tmp_path / "sweep.png"
    code, out, err = run(capsys, "sweep", BUNDLE, "--rates", "1,2,4,8,16,32", "--plot", path)
    assert code == 0 and f"plot written to {path}" in err
    assert table_rows(out)  # the table is still printed
    data = path.read_bytes()
    width, height = png_size(data)
    assert 600 <= width <= 4000 and 600 <= height <= 4000
    # a blank figure of the same size compresses to a few kB; curves, bars and text take far more
    blank = tmp_path / "blank.png"
    figure = plt.figure(figsize=(width / 100, height / 100), dpi=100)
    figure.savefig(blank, format="png", dpi=100)
    plt.close(figure)
    assert png_size(blank.read_bytes()) == (width, height)
    assert len(data) > 8 * blank.stat().st_size
    # every single type's curve and the mix's curve are drawn: pixels of exactly their colours
    pixels = (matplotlib.image.imread(path)[..., :3] * 255).round().astype(int)
    for name, colour in [("mix", MIX_COLOUR), *zip(OPTIONS, OPTION_COLOURS)]:
        rgb = [int(colour[k:k + 2], 16) for k in (1, 3, 5)]
        assert (abs(pixels - rgb).sum(axis=-1) == 0).sum() > 500, name
    wide = tmp_path / "two-slos.png"
    code, _, err = run(capsys, "sweep", *CATALOG, "--rates", "1,8", "--tpot-ms", "40,120", "--plot", wide,
                       "--output", "json")
    assert code == 0, err
    wide_width, wide_height = png_size(wide.read_bytes())
    assert wide_width > 1.8 * width and wide_height == height  # one column per SLO


def plotted_figures(monkeypatch, capsys, *argv) -> list:
    """The matplotlib figures `melange sweep ARGV --plot` drew, kept from being closed."""
    matplotlib = pytest.importorskip("matplotlib", reason="matplotlib not installed: pip install -e '.[plot]'")
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    figures = []
    monkeypatch.setattr(plt, "close", figures.append)
    code, _, err = run(capsys, "sweep", *argv)
    assert code == 0, err
    return figures


def test_plot_labels_each_saving_with_the_sign_its_caption_states(capsys, monkeypatch, tmp_path):
    rates = (1, 4, 16)
    [figure] = plotted_figures(monkeypatch, capsys, BUNDLE, "--rates", ",".join(map(str, rates)),
                               "--plot", tmp_path / "s.png")
    cost_axis = figure.axes[0]
    assert "the mix's saving against the best single type" in cost_axis.get_title()
    labels = [text.get_text() for text in cost_axis.texts]
    savings = [solve_json(capsys, BUNDLE, "--rate", rate)["savings_vs_best_single_percent"] for rate in rates]
    assert any(saving > 5 for saving in savings)  # the mix does save somewhere, so the sign matters
    # a saving of 15% reads "15%" (as the table's "saves" column): not "-15%"
    assert labels == [f"{round(saving)}%" for saving in savings]


def test_plot_legend_marks_single_types_that_cannot_serve_alone(capsys, monkeypatch, tmp_path):
    rates = (1, 4)
    [figure] = plotted_figures(monkeypatch, capsys, *CATALOG, "--rates", "1,4", "--tpot-ms", "40",
                               "--plot", tmp_path / "s.png")
    legend = [text.get_text() for text in figure.axes[0].get_legend().get_texts()]
    alone = {rate: solve_json(capsys, *CATALOG, "--rate", rate, "--tpot-ms", 40)["single_type"] for rate in rates}
    never = [name for name in alone[1] if all(alone[rate][name] is None for rate in rates)]
    assert never and len(never) < len(alone[1])  # some can serve alone, some cannot
    for name in alone[1]:
        entry = next(label for label in legend if label.startswith(f"{name} only"))
        assert ("(cannot serve alone)" in entry) == (name in never), legend


def test_plot_without_matplotlib_is_one_line_before_any_work(tmp_path):
    """As where the extra is not installed: matplotlib made unimportable in a fresh interpreter."""
    path = tmp_path / "out.png"
    code = ("import sys; sys.modules['matplotlib'] = None; from melange.solver.cli.main import main; "
            f"sys.exit(main(['sweep', {str(BUNDLE)!r}, '--rates', '1,2', '--plot', {str(path)!r}]))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert (result.returncode, result.stdout) == (2, "")
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("melange: error: --plot: needs matplotlib, which is not installed")
    # what works where this command runs: the checkout's extra, or matplotlib into this very interpreter
    assert "melange-operator[plot]" not in line  # no such package on an index: nothing is published
    assert ".venv/bin/pip install -e '.[plot]'" in line and f"{sys.executable} -m pip install matplotlib" in line
    assert not path.exists()


class FakeTerminal(io.StringIO):
    def isatty(self) -> bool:
        return True


class FakeClock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_progress_bar_appears_only_after_the_delay_and_is_cleared():
    terminal, clock = FakeTerminal(), FakeClock()
    bar = ProgressBar(4, terminal, delay_s=1.0, clock=clock)
    bar.step("solving at 1 req/s")
    clock.now += 0.5
    bar.step("solving at 2 req/s")
    assert terminal.getvalue() == ""  # quick work draws nothing
    clock.now += 0.6
    bar.step("solving at 4 req/s")
    assert terminal.getvalue() == "\r[############------------] 2/4 solving at 4 req/s\033[K"
    bar.close()
    assert terminal.getvalue().endswith("\r\033[K")


def test_progress_bar_draws_nothing_off_a_terminal():
    stream, clock = io.StringIO(), FakeClock()
    bar = ProgressBar(2, stream, clock=clock)
    clock.now += 5
    bar.step("solving")
    bar.close()
    assert stream.getvalue() == ""
