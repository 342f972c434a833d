"""Per-charger decisions: text, ids and ``now`` in, decisions out. Pure.

Layer 2, above ``gateway.ocpp``. Nothing here opens a socket, a file or a task, reads a clock or
makes an id: the drivers in ``gateway.net`` pass them in (``tests/test_architecture.py`` checks the
imports, transitively). The pure rules of the feature packages (``gateway.tags.rules``,
``gateway.tags.flipturn``, ``gateway.tags.local_list``, ``gateway.reservations.rules``,
``gateway.reservations.gate``, and ``gateway.site``'s ``guard``, ``allocation``, ``lending``,
``sequencer``, ``rounds``, ``profiles``, ``program``) sit in this layer too.

- ``relay``        one charger's relay as a state machine: text frames and ``now`` in, frames
                   to send and events out; the facade over the next six
- ``relay_replay`` the relay's cold methods, inherited by it: gateway CALLs to the charger, the
                   link's lifecycle, the OCPP version, the stored boot and backlog, the replay
- ``pending``      the charger's CALLs forwarded live, each with the cloud's deadline to answer it
- ``samples``      meter readings and statuses shown to the depot view at most once a second
- ``inbox``        the charger's frames held in order behind one awaiting I/O; its local answers
- ``charger_slot`` the charger's single inbound slot and the queue of CALLs waiting for it
- ``replay``       the replay decision (the CALL a stored row becomes, what its answer means)
                   and the replay cursor of one link
- ``events``       what the relay asks its driver to do (store a row, answer locally, ...)
- ``link``         the cloud link's state machine, as one table (offline, connecting,
                   replaying, online)
- ``offline``      the offline action table: what the gateway answers a charger itself, and stores
- ``txmap``        OCPP 1.6 local transaction ids and their rewrite to the cloud's
- ``backoff``      reconnect and retry delays, as values
- ``limits``       rate limits: repeated log lines (once a minute per kind and charger), failed
                   authentications per source address
- ``pacer``        upstream handshakes in flight: at most K, K adapting to the cloud's answers
- ``depot``        the depot view folded from the frames the gateway sees
- ``admission``    who may open a charger connection (path, charge point id, Basic credentials)
- ``certs``        certificates as data: PEM blocks, validity end, the charger's CN
- ``access``       what is known of an id tag: its synced access id, the cloud's last answer
- ``versions``     the OCPP version a charger is answered with, and what the cloud's choice means
- ``program``      a CALL program's values: the requests a feature's planner makes, their replies
"""
