"""The whole gateway: loopback chargers and cloud, the local API, the CLI in a subprocess."""
