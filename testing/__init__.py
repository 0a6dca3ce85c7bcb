"""Local stand-ins for what a deployment talks to, shared by the tests, the benchmarks and the
demo: free ports, a vLLM-shaped OpenAI upstream, a real Prometheus server on loopback.

Never imported by `melange.solver` or `melange.operator`.
"""
