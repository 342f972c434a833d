"""The local HTTP API and the depot dashboard (Starlette, served by uvicorn in the gateway's loop).

Layer 5: above the drivers, below ``gateway.app``. ``static/`` holds the dashboard's HTML, CSS and
JavaScript (package data, in the wheel).

- ``server``        the application: auth, errors, ``/health``, ``/metrics``, ``/api/chargers``
- ``access_ids``    the cache in the Flipturn shapes, ``POST /api/sync``
- ``depot``         ``GET /api/chargers/{id}``, the dashboard and the JSON it polls, its login
- ``reservations``  ``/api/ocpp/reservations``
- ``outbox``        dead letters: ``/api/outbox/dead``
- ``site``          the site power guard: ``GET /api/site``
"""
