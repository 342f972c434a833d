"""The asyncio drivers: sockets, timers and tasks around the pure core.

Layer 4, beside the drivers of the feature packages. They move bytes, rows and time; the decisions
are the pure modules' (``gateway.core``, ``gateway.ocpp``). A session sees the hub only through
``host``'s protocols; the drivers it owns see the session only through theirs (``LinkOwner``,
``EffectsOwner``, ``ObservedSession``, ``CallsOwner``), so the imports run one way: hub → session →
link, effects, observers, calls, tasks; link, effects, observers → host.

- ``wsconn``          WebSocket connections: websockets' sans-I/O protocol on asyncio callbacks
- ``wsclient``        the client side: a connection opened to the cloud (``connect``)
- ``keepalive``       their keepalive pings, one sweep for all
- ``turns``           the hub's handshake turns: links queued for a place among those in flight
- ``server``          the charger-facing server: admission, subprotocol choice, hand-off to the hub
- ``upstream``        opening one charger's cloud link
- ``host``            what a session is given: the hub's services as protocols, its settings
- ``session``         one charger's session: its two sockets, the frames between them and its relay
                      core, the core's events dispatched by type to the drivers it owns:
- ``link``            the session's cloud link loop: paced turns, backoff, early retry, down/up lines
- ``cloud_version``   the session's versions: the charger's offer, the cloud's choice, the 1012 close
- ``effects``         the session's store side: local answers, resend checks, boot saves, replay I/O
- ``observers``       what its traffic shows others: depot view folds, hooks, watchers, the gate
- ``calls``           the futures of the gateway's own CALLs to its charger
- ``runner``          runs a feature's CALL program through a charger's slot: pacing, validation
- ``tasks``           the tasks they start: kept until done, failures counted and logged
- ``hub``             every session of the gateway and the services they share
- ``negotiation``     the hub's versions: the cloud's choices kept, the cloud asked at a handshake
- ``tls``             TLS contexts of both sides, the checks of their files, reload on SIGHUP
- ``depot_recorder``  loads the depot view at start-up and writes it in batches
"""
