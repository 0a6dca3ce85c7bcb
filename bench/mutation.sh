#!/usr/bin/env bash
# Mutation check (a bench, not CI): mutmut makes small deliberate bugs in the core modules and runs
# their fast unit tests against each; a mutant no test notices "survives".
#   bench/mutation.sh [MODULE ...]      MODULE: ilp solve histograms prometheus_source estimate (default: all)
# Needs the `mutation` extra: .venv/bin/pip install -e '.[mutation]'.
# mutmut derives module names from file paths, and the package maps melange.solver onto solver/, so
# each module runs in a staging tree (.mutation/MODULE/) laid out as melange/solver/...; the
# [tool.mutmut] section of pyproject.toml (copied there) names the files and tests.
# Prints killed/total per module; survivors are listed with `cd .mutation/MODULE && mutmut results`
# and shown with `mutmut show NAME`. Known equivalent mutants: bench/mutation-equivalents.md.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$PWD
mutmut=$root/.venv/bin/mutmut
[[ -x $mutmut ]] || { echo "mutation.sh: mutmut is missing; run .venv/bin/pip install -e '.[mutation]'" >&2; exit 1; }

declare -A dotted=([ilp]=melange.solver.ilp [solve]=melange.solver.solve
                   [histograms]=melange.solver.metrics.histograms
                   [prometheus_source]=melange.solver.metrics.prometheus_source
                   [estimate]=melange.solver.profiling.estimate)
modules=("$@")
[[ ${#modules[@]} -gt 0 ]] || modules=(ilp solve histograms prometheus_source estimate)

for module in "${modules[@]}"; do
  name=${dotted[$module]:-}
  [[ -n $name ]] || { echo "mutation.sh: unknown module '$module' (allowed: ${!dotted[*]})" >&2; exit 2; }
  stage=$root/.mutation/$module
  rm -rf "$stage" && mkdir -p "$stage/melange"
  for package in solver operator testing; do
    cp -r "$package" "$stage/melange/$package"
  done
  cp -r tests examples pyproject.toml "$stage/"
  find "$stage" -name __pycache__ -prune -exec rm -rf {} +
  (cd "$stage" && "$mutmut" run --max-children "${MUTATION_JOBS:-1}" "$name.*" > run.log 2>&1 || true
   "$mutmut" results --all true > results.txt 2>&1 || true)
done

printf '| module | mutants | killed | survived | other | score |\n|---|---|---|---|---|---|\n'
for module in "${modules[@]}"; do
  results=$root/.mutation/$module/results.txt
  sed -i 's/^ *//' "$results"
  awk -v module="$module" -v prefix="${dotted[$module]}.x" -F': ' '
    index($1, prefix) { total++; status[$NF]++ }
    END { killed = status["killed"] + status["timeout"]; survived = status["survived"]
          other = total - killed - survived
          printf "| %s | %d | %d | %d | %d | %.1f%% |\n", module, total, killed, survived, other,
                 total ? 100 * killed / total : 0 }' "$results"
done
