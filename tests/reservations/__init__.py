"""Reservation rules on plain values; the book over a real SQLite file."""
