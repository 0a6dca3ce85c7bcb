"""Where profiles come from: the GPU/model catalog and its data, the performance model and its fit,
estimated and shipped profiles, and live measurement of an OpenAI-compatible server.

Builds on the core (`melange.solver`); the core never imports this package.
"""
