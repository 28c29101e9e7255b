"""Runnable examples of MLink-stream used by the README (each one is also a test)."""
