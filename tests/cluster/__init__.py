"""Tests against a real Kubernetes control plane (marker `cluster`)."""
