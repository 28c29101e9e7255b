"""Evaluation on top of the runtime: workloads, baselines, the output cache and the bench."""
