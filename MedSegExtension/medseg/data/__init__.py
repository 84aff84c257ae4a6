"""Built-in sample data with known truth: the synthetic chest CT phantom (the demo, the tests and the
benchmarks use it; nothing is downloaded)."""
