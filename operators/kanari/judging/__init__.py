"""Judging models: statistical canary-vs-stable tests (canary), sequential error control (sequential)."""
