"""The machine a run is on: accelerators, the TensorFlow build, the distribution strategy, the doctor."""
