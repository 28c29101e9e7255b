"""Tiny faust apps that the broker tests run as real worker subprocesses."""
