"""Reservations: the rules and the offline gate, beside the book that records them.

Pure (layer 2, with ``gateway.core``):

- ``rules``  request validation, ReserveNow/CancelReservation payloads, answers, recording rules
- ``gate``   must a tag the cache accepts be refused on a reserved connector?

Drivers (layer 4, with ``gateway.net``):

- ``book``   records reservations in the store and answers the gate
- ``hook``   the session hook through which reservations see a charger's traffic
"""
