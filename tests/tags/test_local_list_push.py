"""Local list push end to end: a gateway, tags synced from a fake Flipturn API over real HTTP, and
1.6 / 2.0.1 chargers built with the ``ocpp`` package over real WebSockets on loopback.

The simulated chargers keep their list the way the specification says (Full replaces, Differential
adds entries with idTagInfo/idTokenInfo and removes those without, a Differential version must be
above the charger's), and the ``ocpp`` package checks every request they get against the schemas.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
from collections.abc import AsyncIterator, Iterator
from typing import Any

import httpx
import pytest
from ocpp.routing import on
from ocpp.v16 import ChargePoint as ChargePoint16
from ocpp.v16 import call as call16
from ocpp.v16 import call_result as result16
from ocpp.v16.enums import Action as Action16
from ocpp.v21 import ChargePoint as ChargePoint21
from ocpp.v201 import ChargePoint as ChargePoint201
from ocpp.v201 import call as call201
from ocpp.v201 import call_result as result201
from ocpp.v201.enums import Action as Action201
from websockets.asyncio.client import connect
from websockets.typing import Subprotocol

from gateway.app import Gateway
from gateway.store.engine import Store
from gateway.tags.sync import FlipturnClient, sync_once
from tests.flipturn_fake import FakeFlipturn, access_id, serving
from tests.support import FakeCloud, make_settings, wait_for

# --- simulated chargers ----------------------------------------------------------------------


class ListKeeper:
    """A charger's list and version, changed as OCPP says; records the SendLocalList it got."""

    def __init__(self, *, max_entries: int, per_message: int, status: str = "Accepted") -> None:
        self.max_entries = max_entries
        self.per_message = per_message
        self.status = status  # what SendLocalList answers when the update is valid
        self.version = 0
        self.entries: dict[str, str | None] = {}  # idTag → idToken type (None in 1.6)
        self.sends: list[dict[str, Any]] = []
        self.version_reads = 0
        self.changed = asyncio.Event()

    def apply(
        self, version: int, update_type: str, items: list[tuple[str, str | None, bool]]
    ) -> str:
        self.sends.append({"version": version, "type": update_type, "items": items})
        if self.status != "Accepted":
            return self.status
        if len(items) > self.per_message:
            return "Failed"
        if update_type == "Differential" and version <= self.version:
            return "VersionMismatch"
        entries = {} if update_type == "Full" else dict(self.entries)
        for tag, kind, adds in items:
            if adds:
                entries[tag] = kind
            else:
                entries.pop(tag, None)
        if len(entries) > self.max_entries:
            return "Failed"
        self.entries, self.version = entries, version
        self.changed.set()
        return "Accepted"


class Charger16(ChargePoint16):
    def __init__(self, cid: str, ws: Any, keeper: ListKeeper, *, supported: bool = True) -> None:
        super().__init__(cid, ws)
        self.keeper = keeper
        self.supported = supported

    @on(Action16.get_configuration)
    def on_get_configuration(self, key: list[str] | None = None) -> Any:
        values = {
            "LocalAuthListMaxLength": str(self.keeper.max_entries),
            "SendLocalListMaxLength": str(self.keeper.per_message),
            "LocalAuthListEnabled": "true",
        }
        return result16.GetConfiguration(
            configuration_key=[
                {"key": k, "readonly": True, "value": v} for k, v in values.items() if k in key
            ]
            if key
            else [],
            unknown_key=[k for k in key or () if k not in values],
        )

    @on(Action16.get_local_list_version)
    def on_get_local_list_version(self) -> Any:
        self.keeper.version_reads += 1
        return result16.GetLocalListVersion(list_version=self.keeper.version)

    @on(Action16.send_local_list)
    def on_send_local_list(
        self, list_version: int, update_type: str, local_authorization_list: Any = None
    ) -> Any:
        items: list[tuple[str, str | None, bool]] = [
            (item["id_tag"], None, "id_tag_info" in item) for item in local_authorization_list or ()
        ]
        return result16.SendLocalList(status=self.keeper.apply(list_version, update_type, items))


class ListHandlers201:
    """The 2.0.1 handlers; OCPP 2.1 has the same messages (the ``ocpp`` package checks each
    request and answer against the schemas of the charger's version)."""

    keeper: ListKeeper

    def __init__(self, cid: str, ws: Any, keeper: ListKeeper) -> None:
        super().__init__(cid, ws)  # type: ignore[call-arg]
        self.keeper = keeper

    @on(Action201.get_variables)
    def on_get_variables(self, get_variable_data: list[dict[str, Any]]) -> Any:
        values = {
            ("Entries", "MaxSet"): str(self.keeper.max_entries),
            ("ItemsPerMessage", "Actual"): str(self.keeper.per_message),
            ("BytesPerMessage", "Actual"): "65000",
            ("Enabled", "Actual"): "true",
        }
        results = []
        for item in get_variable_data:
            name = item["variable"]["name"]
            attribute = item.get("attribute_type", "Actual")
            value = values.get((name, attribute))
            results.append(
                {
                    "attribute_status": "Accepted" if value is not None else "UnknownVariable",
                    "attribute_type": attribute,
                    "attribute_value": value,
                    "component": item["component"],
                    "variable": item["variable"],
                }
            )
        return result201.GetVariables(get_variable_result=results)

    @on(Action201.get_local_list_version)
    def on_get_local_list_version(self) -> Any:
        self.keeper.version_reads += 1
        return result201.GetLocalListVersion(version_number=self.keeper.version)

    @on(Action201.send_local_list)
    def on_send_local_list(
        self, version_number: int, update_type: str, local_authorization_list: Any = None
    ) -> Any:
        items = [
            (item["id_token"]["id_token"], item["id_token"]["type"], "id_token_info" in item)
            for item in local_authorization_list or ()
        ]
        return result201.SendLocalList(status=self.keeper.apply(version_number, update_type, items))


class Charger201(ListHandlers201, ChargePoint201):
    pass


class Charger21(ListHandlers201, ChargePoint21):
    pass


class Unsupporting201(ChargePoint201):
    """A 2.0.1 charger without the local list: the ``ocpp`` package answers NotImplemented."""

    def __init__(self, cid: str, ws: Any, keeper: ListKeeper) -> None:
        super().__init__(cid, ws)
        self.keeper = keeper


@contextlib.asynccontextmanager
async def simulated(
    port: int, cid: str, version: str, keeper: ListKeeper, kind: type[Any] | None = None
) -> AsyncIterator[Any]:
    ws = await connect(
        f"ws://127.0.0.1:{port}/ocpp/{cid}", subprotocols=[Subprotocol(f"ocpp{version}")]
    )
    cls: type[Any] = kind or {"1.6": Charger16, "2.0.1": Charger201, "2.1": Charger21}[version]
    cp = cls(cid, ws, keeper)
    task = asyncio.create_task(cp.start())
    try:
        yield cp
    finally:
        await ws.close()
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task


# --- fixtures --------------------------------------------------------------------------------


@pytest.fixture
def flipturn() -> Iterator[tuple[FakeFlipturn, str]]:
    fake = FakeFlipturn(access_ids=[access_id(n) for n in range(1, 6)], page_size=100)
    with serving(fake) as url:
        yield fake, url


def settings_for(tmp_path: Any, url: str, *, push: bool = True, **sections: Any) -> Any:
    return make_settings(
        tmp_path,
        flipturn={"api_url": url, "api_key": "secret-key", "sync_interval_s": 3600},
        local_list={"push": push},
        **sections,
    )


@contextlib.asynccontextmanager
async def synced_gateway(settings: Any, settle_s: float = 0.0) -> AsyncIterator[Gateway]:
    # The tags are in the cache before the gateway starts (the real sync path), so its periodic
    # sync waits a whole interval and the tests' own syncs never run beside it.
    store = await Store.open(settings.store.path)
    try:
        key = settings.flipturn.api_key.get_secret_value()
        async with FlipturnClient(settings.flipturn.api_url, key) as client:
            await sync_once(store, client)
    finally:
        await store.close()
    gw = Gateway(settings, reconnect_max_s=0.3, local_list_settle_s=settle_s)
    await gw.start()
    try:
        yield gw
    finally:
        await gw.stop()


def usage_rows(path: str) -> set[str]:
    with contextlib.closing(sqlite3.connect(path)) as db:
        return {row[0] for row in db.execute("SELECT tag_key FROM tag_usage")}


async def heartbeat(cp: Any, version: str) -> None:
    """Once the charger's Heartbeat is answered, the gateway has attached it."""
    await cp.call(call16.Heartbeat() if version == "1.6" else call201.Heartbeat())


def tag(n: int) -> str:
    return f"TAG{n:06d}"


async def settle(gw: Gateway) -> None:
    assert gw.local_list is not None
    await gw.local_list.idle()


async def local_list_of(gw: Gateway, cid: str) -> dict[str, Any]:
    """``localList`` as GET /api/chargers/{id} shows it (and the GET /api/chargers row, the same)."""
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.api_port}") as api:
        rows = (await api.get("/api/chargers")).json()["data"]
        detail = (await api.get(f"/api/chargers/{cid}")).json()
    (row,) = [r for r in rows if r["id"] == cid]
    assert row["localList"] == detail["localList"]
    result: dict[str, Any] = detail["localList"]
    return result


async def pushes(gw: Gateway, result: str) -> float:
    async with httpx.AsyncClient(base_url=f"http://127.0.0.1:{gw.api_port}") as api:
        text = (await api.get("/metrics")).text
    for line in text.splitlines():
        if line.startswith(f'flipturn_gateway_local_list_pushes_total{{result="{result}"}}'):
            return float(line.split()[-1])
    return 0.0


# --- tests -----------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["1.6", "2.0.1", "2.1"])
async def test_full_then_differential_after_a_sync_that_revokes_and_adds(
    tmp_path: Any, flipturn: tuple[FakeFlipturn, str], version: str
) -> None:
    fake, url = flipturn
    keeper = ListKeeper(max_entries=100, per_message=2)
    async with (
        synced_gateway(settings_for(tmp_path, url)) as gw,
        simulated(gw.charger_port, "CP-1", version, keeper),
    ):
        await wait_for(lambda: set(keeper.entries) == {tag(n) for n in range(1, 6)})
        await settle(gw)
        # 5 tags at 2 per message: one Full, then Differentials (2.0.1 D01.FR.11)
        assert [(s["type"], s["version"], len(s["items"])) for s in keeper.sends] == [
            ("Full", 1, 2), ("Differential", 2, 2), ("Differential", 3, 1)
        ]  # fmt: skip
        if version != "1.6":
            assert set(keeper.entries.values()) == {"ISO14443"}
        assert await local_list_of(gw, "CP-1") == {
            "owner": "gateway", "version": 3, "entries": 5, "truncated": False,
        }  # fmt: skip

        # Flipturn revokes tag 2, deletes tag 3, adds tag 9
        fake.access_ids = [access_id(n) for n in (1, 4, 5, 9)] + [access_id(2, status="Revoked")]
        sent = len(keeper.sends)
        assert gw.sync is not None
        await gw.sync.sync_now()
        await settle(gw)
        assert set(keeper.entries) == {tag(n) for n in (1, 4, 5, 9)}
        diffs = keeper.sends[sent:]
        assert [s["type"] for s in diffs] == ["Differential", "Differential"]
        removed = [item for s in diffs for item in s["items"] if not item[2]]
        assert {item[0] for item in removed} == {tag(2), tag(3)}  # removal: no idTagInfo
        assert (await local_list_of(gw, "CP-1"))["entries"] == 4
        assert await pushes(gw, "accepted") == 5


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_no_resend_when_the_version_matches(
    tmp_path: Any, flipturn: tuple[FakeFlipturn, str], version: str
) -> None:
    _, url = flipturn
    keeper = ListKeeper(max_entries=100, per_message=50)
    settings = settings_for(tmp_path, url)
    async with synced_gateway(settings) as gw:
        async with simulated(gw.charger_port, "CP-1", version, keeper):
            await wait_for(lambda: len(keeper.entries) == 5)
            await settle(gw)
        assert len(keeper.sends) == 1
        reads = keeper.version_reads
        async with simulated(gw.charger_port, "CP-1", version, keeper):
            await wait_for(lambda: keeper.version_reads > reads)
            await settle(gw)
        assert len(keeper.sends) == 1  # same version, same tags: nothing sent

    # across a restart too; and a charger that lost its list gets it again in full
    async with synced_gateway(settings) as gw:
        async with simulated(gw.charger_port, "CP-1", version, keeper):
            await wait_for(lambda: keeper.version_reads > reads + 1)
            await settle(gw)
        assert len(keeper.sends) == 1
        keeper.version, keeper.entries = 0, {}  # e.g. a factory reset
        async with simulated(gw.charger_port, "CP-1", version, keeper):
            await wait_for(lambda: len(keeper.entries) == 5)
            await settle(gw)
        assert [(s["type"], s["version"]) for s in keeper.sends[1:]] == [("Full", 2)]


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_over_capacity_the_most_recently_used_tags_go_first(
    tmp_path: Any, flipturn: tuple[FakeFlipturn, str], version: str
) -> None:
    fake, url = flipturn
    keeper = ListKeeper(max_entries=3, per_message=10)
    settings = settings_for(tmp_path, url)
    async with (
        synced_gateway(settings) as gw,
        simulated(gw.charger_port, "CP-1", version, keeper) as cp,
    ):
        await wait_for(lambda: len(keeper.entries) == 3)
        await settle(gw)
        assert set(keeper.entries) == {tag(1), tag(2), tag(3)}  # nothing used yet: key order
        assert (await local_list_of(gw, "CP-1"))["truncated"] is True
        for n in (5, 4):  # drivers use tags 5 then 4 (answered by the gateway)
            if version == "1.6":
                answer = await cp.call(call16.Authorize(id_tag=tag(n)))
                assert answer.id_tag_info["status"] == "Accepted"
            else:
                token = {"id_token": tag(n), "type": "ISO15693"}
                answer = await cp.call(call201.Authorize(id_token=token))
                assert answer.id_token_info["status"] == "Accepted"
        assert usage_rows(settings.store.path) == set()  # not written per frame
        fake.access_ids = [*fake.access_ids, access_id(6)]
        assert gw.sync is not None
        await gw.sync.sync_now()
        await settle(gw)
        assert set(keeper.entries) == {tag(4), tag(5), tag(1)}
        assert keeper.sends[-1]["type"] == "Differential"
        if version == "2.0.1":  # the type the charger presented is the type pushed
            assert keeper.entries[tag(4)] == "ISO15693" and keeper.entries[tag(1)] == "ISO14443"
    assert usage_rows(settings.store.path) == {tag(4), tag(5)}  # written at the latest on stop


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_a_charger_that_does_not_support_the_list_is_left_alone(
    tmp_path: Any, flipturn: tuple[FakeFlipturn, str], version: str, caplog: Any
) -> None:
    fake, url = flipturn
    if version == "1.6":
        keeper = ListKeeper(max_entries=100, per_message=100, status="NotSupported")
        kind: type[Any] | None = None
    else:
        keeper = ListKeeper(max_entries=100, per_message=100)
        kind = Unsupporting201  # CALLERROR NotImplemented to every request
    settings = settings_for(tmp_path, url)
    caplog.set_level(logging.WARNING, logger="gateway.tags.local_list_push")
    async with (
        synced_gateway(settings) as gw,
        simulated(gw.charger_port, "CP-1", version, keeper, kind),
    ):
        await wait_for(lambda: gw.local_list is not None and
                       gw.local_list.refusal("CP-1") is not None)  # fmt: skip
        await settle(gw)
        sent = len(keeper.sends)
        fake.access_ids = [*fake.access_ids, access_id(7)]
        assert gw.sync is not None
        await gw.sync.sync_now()
        await settle(gw)
        assert len(keeper.sends) == sent  # not asked again
        assert await local_list_of(gw, "CP-1") == {
            "owner": "none", "version": None, "entries": 0, "truncated": False,
        }  # fmt: skip
        if version == "1.6":
            assert await pushes(gw, "not_supported") == 1
    async with synced_gateway(settings) as gw:  # remembered across a restart
        async with simulated(gw.charger_port, "CP-1", version, keeper, kind) as cp:
            await heartbeat(cp, version)
            await settle(gw)
        assert len(keeper.sends) == (1 if version == "1.6" else 0)
        assert gw.local_list is not None and gw.local_list.refusal("CP-1")
    refusals = [r for r in caplog.records if "not pushing a local authorization list" in r.message]
    assert len(refusals) == 1  # logged once


async def test_cloud_sending_send_local_list_takes_ownership(
    tmp_path: Any, flipturn: tuple[FakeFlipturn, str], cloud: FakeCloud, caplog: Any
) -> None:
    fake, url = flipturn
    keeper = ListKeeper(max_entries=100, per_message=100)
    settings = settings_for(tmp_path, url, upstream={"url": cloud.url})
    caplog.set_level(logging.WARNING, logger="gateway.tags.local_list_push")
    async with (
        synced_gateway(settings) as gw,
        simulated(gw.charger_port, "CP-1", "1.6", keeper),
    ):
        await wait_for(lambda: len(keeper.entries) == 5)  # pushed while online too
        await settle(gw)
        await cloud.wait_connected("CP-1")
        answer = await cloud.call(
            "CP-1",
            "SendLocalList",
            {"listVersion": 40, "updateType": "Full",
             "localAuthorizationList": [{"idTag": "CLOUD1", "idTagInfo": {"status": "Accepted"}}]},
        )  # fmt: skip
        assert answer[2] == {"status": "Accepted"}  # the cloud's CALL reached the charger
        assert keeper.entries == {"CLOUD1": None}
        fake.access_ids = [*fake.access_ids, access_id(8)]
        assert gw.sync is not None
        await gw.sync.sync_now()
        await settle(gw)
        assert keeper.entries == {"CLOUD1": None} and keeper.version == 40
        assert await local_list_of(gw, "CP-1") == {
            "owner": "cloud", "version": 40, "entries": 1, "truncated": False,
        }  # fmt: skip
    async with synced_gateway(settings) as gw:  # persisted
        reads = keeper.version_reads
        async with simulated(gw.charger_port, "CP-1", "1.6", keeper):
            await cloud.wait_connected("CP-1")
            await settle(gw)
        assert keeper.version_reads == reads  # not even asked
        assert gw.local_list is not None and gw.local_list.describe("CP-1")["owner"] == "cloud"
    assert any("owns this charger's local authorization list" in r.message for r in caplog.records)


async def test_push_is_off_by_default(tmp_path: Any, flipturn: tuple[FakeFlipturn, str]) -> None:
    _, url = flipturn
    keeper = ListKeeper(max_entries=100, per_message=100)
    settings = make_settings(
        tmp_path, flipturn={"api_url": url, "api_key": "secret-key", "sync_interval_s": 3600}
    )
    assert settings.local_list.push is False
    async with (
        synced_gateway(settings) as gw,
        simulated(gw.charger_port, "CP-1", "1.6", keeper) as cp,
    ):
        await heartbeat(cp, "1.6")  # the charger is served; its list is not touched
        fake_sync = gw.sync
        assert fake_sync is not None
        await fake_sync.sync_now()
        await settle(gw)
        assert keeper.version_reads == 0 and keeper.sends == []
        assert (await local_list_of(gw, "CP-1"))["owner"] == "none"
        assert await pushes(gw, "accepted") == 0


async def test_a_differential_the_charger_refuses_is_followed_by_a_full_update(
    tmp_path: Any, flipturn: tuple[FakeFlipturn, str]
) -> None:
    fake, url = flipturn
    keeper = ListKeeper(max_entries=100, per_message=100)
    async with (
        synced_gateway(settings_for(tmp_path, url)) as gw,
        simulated(gw.charger_port, "CP-1", "1.6", keeper),
    ):
        await wait_for(lambda: len(keeper.entries) == 5)
        await settle(gw)
        original = keeper.apply

        def refuse_differentials(
            version: int, update_type: str, items: list[tuple[str, str | None, bool]]
        ) -> str:
            if update_type == "Differential":
                keeper.sends.append({"version": version, "type": update_type, "items": items})
                return "Failed"
            return original(version, update_type, items)

        keeper.apply = refuse_differentials  # type: ignore[method-assign]
        fake.access_ids = [*fake.access_ids, access_id(9)]
        assert gw.sync is not None
        await gw.sync.sync_now()
        await settle(gw)
        assert [s["type"] for s in keeper.sends[-2:]] == ["Differential", "Full"]
        assert set(keeper.entries) == {tag(n) for n in (1, 2, 3, 4, 5, 9)}
        assert await pushes(gw, "failed") == 1


async def test_a_boot_notification_rechecks_the_list_after_the_settle_time(
    tmp_path: Any, flipturn: tuple[FakeFlipturn, str]
) -> None:
    _, url = flipturn
    keeper = ListKeeper(max_entries=100, per_message=100)
    async with (
        synced_gateway(settings_for(tmp_path, url), settle_s=0.05) as gw,
        simulated(gw.charger_port, "CP-1", "1.6", keeper) as cp,
    ):
        await wait_for(lambda: len(keeper.entries) == 5)  # after connect + settle_s
        await settle(gw)
        keeper.version, keeper.entries = 0, {}  # the charger rebooted with its list wiped
        boot = await cp.call(
            call16.BootNotification(charge_point_model="M", charge_point_vendor="V")
        )
        assert boot.status == "Accepted"
        await wait_for(lambda: len(keeper.entries) == 5)
        await settle(gw)
        assert [(s["type"], s["version"]) for s in keeper.sends] == [("Full", 1), ("Full", 2)]
