"""The SQLite store on real files, with injected faults."""
