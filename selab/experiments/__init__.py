"""Many runs at once: sweeps of papermill training runs and the comparison of finished runs."""
