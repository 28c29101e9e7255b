"""Real workloads that ship in wheels: models, frame sources and their output specs.

Each module gives pipeline-config factories (``model``, ``frames``) and a ``workload()`` that
collects every model's outputs through the shared output cache.
"""
