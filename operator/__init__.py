"""The Kubernetes side of Mélange: kopf handlers, the planner and the size-aware router.

It depends on `melange.solver`, never the other way round.
"""
