"""The Kubernetes side of Mélange: the kopf operator and (in `router`) the size-aware router.

It depends on `melange.solver`, never the other way round.
"""
