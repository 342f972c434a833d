"""Flipturn Edge Gateway: a local OCPP-J proxy between depot chargers and the Flipturn cloud.

The layers, lowest first; a module imports only its own layer and the ones below
(``tests/test_architecture.py`` checks this and that no import cycle forms)::

    6  app         app cli __main__                      wiring, the command line
    5  api         api/                                  the local HTTP API, the dashboard
    4  drivers     net/  tags.{cache,sync,local_list_push}  reservations.{book,hook}
                                                         sockets, timers, tasks, httpx
    3  store       store/                                SQLite, rows, StoreError
    2  core        core/  tags.{rules,flipturn,local_list}  reservations.{rules,gate}
                                                         decisions: text, ids and now in (pure)
    1  ocpp        ocpp/                                 frames and schemas (pure)
    0  base        errors config checks logs metrics sdnotify

Layers 1 and 2 load no asyncio, sqlite, httpx or websockets, even through another module.
"""

__version__ = "0.1.0"  # the one place the version is written; pyproject.toml reads it from here

__all__ = ["__version__"]
