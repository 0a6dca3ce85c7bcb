"""A two-option, 2x2-bucket problem shared by the solver and routing tests; small enough to check by hand."""
from __future__ import annotations

from melange.solver.buckets import BucketGrid
from melange.solver.options import GpuOption
from melange.solver.problem import Problem, match_profiles
from melange.solver.profiles import Profile
from melange.solver.workload import make_workload

GRID = BucketGrid((100, 1000), (50, 500))
# Max req/s per bucket: "small" cannot serve in(100,1000] out(50,500].
TABLES = {"small": ((8.0, 1.0), (2.0, None)), "big": ((20.0, 6.0), (10.0, 3.0))}


def problem(rate=4.0, options=None, tables=None, share=((0.4, 0.1), (0.3, 0.2))) -> Problem:
    """The problem at `rate` req/s; options and tables default to small ($1/h) and big ($4/h)."""
    options = options or [GpuOption("small", 1.0), GpuOption("big", 4.0)]
    tables = tables or TABLES
    profiles = [Profile("m", o.gpu_type, GRID, tables[o.name]) for o in options]
    return match_profiles(make_workload(rate, GRID, [list(r) for r in share], "w"), options, profiles)
