"""The benchmark harness on plain data and in tiny real runs."""
