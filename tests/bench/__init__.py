"""Tests of the benchmarks in bench/: each runs as a user runs it and prints what it claims."""
