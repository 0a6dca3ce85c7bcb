from __future__ import annotations

import pytest
import yaml

from melange.solver.errors import InputError
from melange.solver.inputs import load_bundle, load_document, load_options, load_profiles, load_workload

from ..conftest import EXAMPLES

ARENA = EXAMPLES / "arena-llama2-7b"


def test_example_bundle_and_separate_files_agree():
    bundle = load_bundle(ARENA / "bundle.yaml")
    assert bundle.settings == {"slice_factor": 8}
    assert load_workload(ARENA / "workload.yaml") == bundle.problem.workload
    assert load_options(ARENA / "options.yaml") == bundle.problem.options
    assert [p.gpu for p in bundle.problem.profiles] == ["L4", "A10G", "A100", "H100"]
    assert load_profiles(ARENA / "profiles" / "l4.yaml")[0] == bundle.problem.profiles[0]


def write_bundle(tmp_path, **changes):
    data = yaml.safe_load((ARENA / "bundle.yaml").read_text())
    data["profiles"] = [str(ARENA / "profiles" / f"{n}.yaml") for n in ("l4", "a10g", "a100-80gb", "h100")]
    data.update(changes)
    path = tmp_path / "bundle.yaml"
    path.write_text(yaml.safe_dump(data))
    return path, data


def test_option_without_profile_is_named(tmp_path):
    path, data = write_bundle(tmp_path)
    data["options"].append({"name": "t4", "gpu": "T4", "price_per_hour": 0.35})
    path.write_text(yaml.safe_dump(data))
    with pytest.raises(InputError) as error:
        load_bundle(path)
    # the file, the field and the value, and what would be accepted
    assert str(error.value).startswith(f"{path}.options.t4.gpu: no profile for GPU 'T4'"), error.value
    assert "A10G x1" in str(error.value) or "a10g x1" in str(error.value)


def bundle_with_changed_l4(tmp_path, **changes):
    """The example bundle with its L4 profile replaced by a copy carrying `changes`."""
    profile = yaml.safe_load((ARENA / "profiles" / "l4.yaml").read_text())
    profile.update(changes)
    (tmp_path / "l4.yaml").write_text(yaml.safe_dump(profile))
    path, data = write_bundle(tmp_path)
    data["profiles"][0] = str(tmp_path / "l4.yaml")
    path.write_text(yaml.safe_dump(data))
    return path


def test_profile_on_another_grid_is_rejected(tmp_path):
    grid = {"input_edges": [25, 100, 250, 500, 1000, 4000], "output_edges": [25, 100, 250, 500, 1000, 2000]}
    with pytest.raises(InputError, match="does not match the workload's grid") as error:
        load_bundle(bundle_with_changed_l4(tmp_path, grid=grid))
    assert error.value.where == str(tmp_path / "l4.yaml")


def test_profiles_for_different_slos_are_rejected(tmp_path):
    with pytest.raises(InputError, match="different SLOs"):
        load_bundle(bundle_with_changed_l4(tmp_path, slo={"tpot_ms": 40}))


def test_bundle_with_trace_workload(tmp_path):
    (tmp_path / "trace.csv").write_text("10,10\n300,300\n")
    path, _ = write_bundle(tmp_path, workload={"trace": "trace.csv", "rate": 2.0,
                                               "grid": {"input_edges": [25, 100, 250, 500, 1000, 2000],
                                                        "output_edges": [25, 100, 250, 500, 1000, 2000]}})
    workload = load_bundle(path).problem.workload
    assert workload.rate == 2.0 and workload.distribution[0][0] == 0.5


@pytest.mark.parametrize("content,suffix,match", [
    ("a: [1, 2\n", ".yaml", "not valid YAML"),
    ("{\"a\": 1,}", ".json", "not valid JSON"),
])
def test_unparseable_files(tmp_path, content, suffix, match):
    path = tmp_path / f"f{suffix}"
    path.write_text(content)
    with pytest.raises(InputError, match=match):
        load_document(path)


def test_missing_file():
    with pytest.raises(InputError, match="cannot read file"):
        load_document(EXAMPLES / "nope.yaml")


def test_yaml_exponent_without_a_dot_is_a_number(tmp_path):
    """YAML 1.1 reads 1e9 as a string; a rate written that way is meant as a number."""
    path = tmp_path / "w.yaml"
    path.write_text("rate: 1e3\ngrid: {input_edges: [10], output_edges: [10]}\ndistribution: [[1]]\nother: [2E-3, -1e+2]\n")
    assert load_document(path) == {"rate": 1000.0, "grid": {"input_edges": [10], "output_edges": [10]},
                                   "distribution": [[1]], "other": [0.002, -100.0]}
    path.write_text("rate: 1e3\ngrid: {input_edges: [10], output_edges: [10]}\ndistribution: [[1]]\n")
    assert load_workload(path).rate == 1000.0


def test_bundle_trace_is_binned_on_the_profiles_grid(tmp_path):
    """A trace workload without a grid takes the profiles' (6x6) grid, not the paper's 10x6."""
    (tmp_path / "t.csv").write_text("input_tokens,output_tokens\n20,20\n1500,20\n")
    path, _ = write_bundle(tmp_path, workload={"trace": str(tmp_path / "t.csv"), "rate": 2})
    workload = load_bundle(path).problem.workload
    assert workload.grid.shape == (6, 6)
    assert workload.distribution[0][0] == 0.5 and workload.distribution[5][0] == 0.5
    assert workload.rate_source == f"given in {path}.workload.rate"


def test_melange_release_json_without_slice_factor_says_so(tmp_path):
    path = tmp_path / "ref.json"
    path.write_text('{"gpu_info": {}, "workload_distribution": [[1]], "total_request_rate": 1}')
    with pytest.raises(InputError, match="looks like a melange-release JSON config but lacks slice_factor"):
        load_bundle(path)
