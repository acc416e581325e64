"""A compressed chaos soak of real agents against the simulated world (`python -m tests.soak`)."""
