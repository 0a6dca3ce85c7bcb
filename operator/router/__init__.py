"""The size-aware, OpenAI-compatible router that enforces the solver's routing table in front of
the vLLM pools (`python -m melange.operator.router`)."""
