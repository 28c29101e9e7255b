"""Real workloads: black-box models and the frames they run on."""
