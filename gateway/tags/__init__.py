"""Access ids (RFID cards, vehicle MAC ids): the rules, the Flipturn API shapes, the cache, sync.

Pure (layer 2, with ``gateway.core``):

- ``rules``       tag matching and the offline authorization decision
- ``flipturn``    the Flipturn REST API shapes: validate what it sends, rebuild what the API shows
- ``local_list``  the charger's Local Authorization List as the gateway keeps it
- ``learned``     the cloud's answers held in memory until their learned row is committed
- ``list_program`` the push's CALL programs: the capacity and version read, a plan's
                  SendLocalList steps, what each answer means

Drivers (layer 4, with ``gateway.net``):

- ``cache``            offline answers and learning, over the store
- ``sync``             the Flipturn API client (httpx) and the periodic sync into the store
- ``local_list_push``  keeps each charger's local list equal to the synced access ids
"""
