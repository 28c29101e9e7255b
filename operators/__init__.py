"""MLink-stream."""
