"""`melange demo`: the real operator following shifting traffic on this machine, no cluster: the traffic
player, a real Prometheus when installed, the emulated Kubernetes API (`melange.testing`) and a live
terminal view. Installed with the `demo` extra; nothing in `melange.solver` or `melange.operator`
imports it (the `melange` command finds it through an entry point).
"""
