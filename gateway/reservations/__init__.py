"""Reservations: the rules and the offline gate, beside the book that records them."""
