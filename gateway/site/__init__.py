"""The site power guard: keeps a depot's chargers under its grid limit while the cloud's smart
charging cannot reach them (docs/site-power.md; OCPP 2.1 Part 2 K26, the local fail-safe).

Pure (layer 2, with ``gateway.core``): the guard's rules, values in and decisions out, time passed in.

- ``guard``       engaged or released, as one table, from the chargers' cloud links
- ``allocation``  the limit shared among the chargers: targets per charger and per transaction
- ``lending``     a transaction's draw read from its MeterValues; lending what it does not use
- ``sequencer``   what each charger counts at, and the cap changes to send now so that the
                  counted sum never exceeds the limit; the chargers' answers folded back
- ``rounds``      one round: the slots, transactions and lending in; the changes to send out
- ``profiles``    the SetChargingProfile / ClearChargingProfile payloads, the charger's rate unit
                  and stack level, and what a cloud profile means for the gateway's cap
- ``program``     one change's CALL program: the cap or its Clear, and the capability read

Driver (layer 4, with ``gateway.net``):

- ``driver``      ``SiteGuard``: the chargers' links, transactions and readings in; rounds run,
                  caps sent through ``gateway.net.runner``, answers recorded and kept in the store
"""
