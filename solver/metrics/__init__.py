"""The live workload: metric names, histogram rebinning onto the solver's grid, the Prometheus
workload source and a traffic player that exports vLLM-named metrics for synthetic traffic.

Builds on the core (`melange.solver`); the core never imports this package.
"""
