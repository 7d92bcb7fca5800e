"""batchd's benchmarks: each scenario runs the real service in subprocesses and prints
its figures, with a baseline measured in the same run where one applies."""
