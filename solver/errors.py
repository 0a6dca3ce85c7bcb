"""The one exception type users see: a bad input, named precisely."""
from __future__ import annotations


class InputError(ValueError):
    """A user input is wrong. The message names where (file, field), what was wrong and what is allowed.

    The CLI prints it as one line and exits 2; the operator reports it in status and changes nothing.
    """

    def __init__(self, where: str, problem: str, allowed: str | None = None) -> None:
        self.where = where
        self.problem = problem
        self.allowed = allowed
        text = f"{where}: {problem}" if where else problem
        if allowed:
            text += f" (allowed: {allowed})"
        super().__init__(text)


class InfeasibleError(InputError):
    """No allocation can serve the workload: some buckets with traffic have no option able to serve them."""

    def __init__(self, buckets: list[str], reason: str = "no GPU option can serve these buckets") -> None:
        self.buckets = tuple(buckets)
        shown = ", ".join(buckets[:12]) + (f" and {len(buckets) - 12} more" if len(buckets) > 12 else "")
        super().__init__("infeasible", f"{reason}: {shown}")


class UnavailableError(RuntimeError):
    """A server we depend on (Prometheus, a server being profiled) could not give a trustworthy answer.

    The CLI prints it as one line and exits 3; the operator keeps the last good allocation.
    """

    what = "server"
