"""Tags at the pair tier: the cloud's answers learned at once (the next offline answer, however
soon the link drops), offline answers from the synced cache, and the local list push rounds
(Full on a version mismatch, Differential after a sync, the cloud's SendLocalList taking over).

The Flipturn API is its fake (tests/flipturn_fake.py) through ``httpx.MockTransport``; the sync is
the real ``sync_once`` into the real store."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest

from gateway.ocpp.frames import OcppVersion
from gateway.tags.sync import FlipturnClient, sync_once
from tests.flipturn_fake import FakeFlipturn, access_id
from tests.pair.harness import Pair, SimCharger, make_settings, open_pair, running
from tests.pair.test_store_forward import start_tx

BLOCKED_16 = {"idTagInfo": {"status": "Blocked"}}
BLOCKED_201 = {"idTokenInfo": {"status": "Blocked"}}


def token(tag: str) -> dict[str, Any]:
    return {"idToken": tag, "type": "ISO14443"}


def tag(n: int) -> str:
    return f"TAG{n:06d}"


# --- the learned cache ---------------------------------------------------------------------------


async def test_a_blocked_authorize_then_the_link_drop_is_the_next_offline_answer(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, offline={"unknown_tags": "reject"})
    async with running(tmp_path, settings) as pair:
        pair.cloud.responder = lambda cid, action, payload: BLOCKED_16
        pair.cloud.drop_after.add("Authorize")
        cp = await pair.connect("CP")
        online = await pair.call(cp, "Authorize", {"idTag": "tag-1"})
        assert online[2] == BLOCKED_16  # the cloud's answer, relayed
        assert not pair.cloud.links["CP"].is_open
        offline = await pair.call(cp, "Authorize", {"idTag": "tag-1"})
        assert offline[2]["idTagInfo"]["status"] == "Blocked"  # not the policy's Invalid
        unknown = await pair.call(cp, "Authorize", {"idTag": "tag-2"})
        assert unknown[2]["idTagInfo"]["status"] == "Invalid"
        assert pair.cloud.actions("CP") == ["Authorize"]  # the second one answered locally


@pytest.mark.parametrize(
    ("action", "payload", "answer"),
    [
        ("StartTransaction", start_tx("tag"), {"transactionId": 7, **BLOCKED_16}),
        (
            "StopTransaction",
            {"transactionId": 7, "idTag": "tag", "meterStop": 5, "timestamp": "2026-12-01T11:00Z"},
            BLOCKED_16,
        ),
    ],
)
async def test_transaction_answers_are_learned_at_once_16(
    tmp_path: Path, action: str, payload: dict[str, Any], answer: dict[str, Any]
) -> None:
    settings = make_settings(tmp_path, offline={"unknown_tags": "accept"})
    async with running(tmp_path, settings) as pair:
        pair.cloud.responder = lambda cid, a, p: answer
        pair.cloud.drop_after.add(action)
        cp = await pair.connect("CP")
        assert (await pair.call(cp, action, payload))[2] == answer
        offline = await pair.call(cp, "Authorize", {"idTag": "tag"})
        assert offline[2]["idTagInfo"]["status"] == "Blocked"  # not the policy's Accepted


async def test_id_token_info_is_learned_at_once_and_kept_across_a_restart_201(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, offline={"unknown_tags": "accept"})
    pair = await open_pair(tmp_path, settings)
    try:
        pair.cloud.responder = lambda cid, a, p: BLOCKED_201
        pair.cloud.drop_after.add("Authorize")
        ev = await pair.connect("EV", "2.0.1")
        assert (await pair.call(ev, "Authorize", {"idToken": token("ABC")}))[2] == BLOCKED_201
        offline = await pair.call(ev, "Authorize", {"idToken": token("ABC")})
        assert offline[2]["idTokenInfo"]["status"] == "Blocked"
        pair = await pair.restart()  # the learned row was written
        ev = await pair.connect("EV", "2.0.1")
        again = await pair.call(ev, "Authorize", {"idToken": token("ABC")})
        assert again[2]["idTokenInfo"]["status"] == "Blocked"
        assert pair.cloud.opened[-1][0] == "EV" and pair.cloud.refused_opens >= 1
    finally:
        await pair.close()


async def test_an_answer_the_store_cannot_take_still_answers_then_is_written(
    tmp_path: Path,
) -> None:
    settings = make_settings(tmp_path, offline={"unknown_tags": "reject"})
    async with running(tmp_path, settings) as pair:
        pair.store.start_monitoring(every_s=1.0)  # as the running gateway does
        pair.cloud.responder = lambda cid, action, payload: BLOCKED_16
        pair.cloud.drop_after.add("Authorize")
        cp = await pair.connect("CP")
        await pair.store.fetchone("PRAGMA query_only = 1")  # every commit fails from now on
        assert (await pair.call(cp, "Authorize", {"idTag": "tag"}))[2] == BLOCKED_16
        assert (await pair.call(cp, "Authorize", {"idTag": "tag"}))[2] == BLOCKED_16  # offline
        assert not pair.store.ok  # the learned row's commit failed
        assert pair.tags.pending == 1
        assert (await pair.call(cp, "Authorize", {"idTag": "tag"}))[2] == BLOCKED_16
        await pair.store.fetchone("PRAGMA query_only = 0")
        await pair.advance(2)  # the store's probe sees it commit again: the answer is written
        assert pair.store.ok and pair.tags.pending == 0
        row = await pair.store.find_learned_tag("TAG")
        assert row is not None and row.status == "Blocked"
        assert pair.cloud.actions("CP") == ["Authorize"]


async def sync(pair: Pair, fake: FakeFlipturn) -> None:
    """One sync from the Flipturn API into the store, then the pusher's after-sync step."""
    async with FlipturnClient(
        "http://flipturn.test", fake.api_key, transport=fake.transport()
    ) as c:
        await sync_once(pair.store, c)
    await pair.local_list.after_sync()
    await pair.settle()


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_offline_answers_come_from_the_synced_cache(tmp_path: Path, version: Any) -> None:
    fake = FakeFlipturn(access_ids=[access_id(1), access_id(2, status="Revoked")], page_size=100)
    settings = make_settings(tmp_path, offline={"unknown_tags": "reject"})
    async with running(tmp_path, settings) as pair:
        await sync(pair, fake)
        pair.cloud.up = False
        cp = await pair.connect("CP", version)

        async def authorize(name: str) -> str:
            if version == "1.6":
                answer = await pair.call(cp, "Authorize", {"idTag": name})
                return str(answer[2]["idTagInfo"]["status"])
            answer = await pair.call(cp, "Authorize", {"idToken": token(name)})
            return str(answer[2]["idTokenInfo"]["status"])

        assert [await authorize(t) for t in (tag(1), tag(2), "STRANGER")] == [
            "Accepted",
            "Blocked",
            "Invalid",
        ]
        assert pair.cloud.frames("CP") == []
        assert pair.session("CP").backlog == 0  # Authorize is answered, never stored


# --- the local list push -------------------------------------------------------------------------


class ListCharger:
    """A charger's local list kept as OCPP says (Full replaces, Differential adds the entries with
    idTagInfo/idTokenInfo and removes the others, a Differential must raise the version)."""

    def __init__(self, charger: SimCharger, *, max_entries: int = 100, per_message: int = 100):
        self.version = 0
        self.entries: dict[str, str | None] = {}
        self.sends: list[tuple[str, int, int]] = []  # (type, version, items)
        self.version_reads = 0
        self.max_entries = max_entries
        self.per_message = per_message
        self.refuse_differentials = False
        v16 = charger.version == "1.6"
        handlers = charger.handlers
        handlers["GetConfiguration"] = self._configuration
        handlers["GetVariables"] = self._variables
        handlers["GetLocalListVersion"] = lambda p: (
            {"listVersion": self._read()} if v16 else {"versionNumber": self._read()}
        )
        handlers["SendLocalList"] = self._send

    def _read(self) -> int:
        self.version_reads += 1
        return self.version

    def _configuration(self, payload: dict[str, Any]) -> dict[str, Any]:
        values = {
            "LocalAuthListMaxLength": str(self.max_entries),
            "SendLocalListMaxLength": str(self.per_message),
            "LocalAuthListEnabled": "true",
        }
        keys = payload.get("key") or []
        return {
            "configurationKey": [
                {"key": k, "readonly": True, "value": values[k]} for k in keys if k in values
            ],
            "unknownKey": [k for k in keys if k not in values],
        }

    def _variables(self, payload: dict[str, Any]) -> dict[str, Any]:
        values = {
            ("Entries", "MaxSet"): str(self.max_entries),
            ("ItemsPerMessage", "Actual"): str(self.per_message),
            ("BytesPerMessage", "Actual"): "65000",
            ("Enabled", "Actual"): "true",
        }
        results = []
        for item in payload["getVariableData"]:
            attribute = item.get("attributeType", "Actual")
            value = values.get((item["variable"]["name"], attribute))
            result = {
                "attributeStatus": "Accepted" if value is not None else "UnknownVariable",
                "attributeType": attribute,
                "component": item["component"],
                "variable": item["variable"],
            }
            if value is not None:
                result["attributeValue"] = value
            results.append(result)
        return {"getVariableResult": results}

    def _send(self, payload: dict[str, Any]) -> dict[str, Any]:
        version = int(payload.get("listVersion", payload.get("versionNumber", 0)))
        kind = payload["updateType"]
        items = []
        for entry in payload.get("localAuthorizationList") or ():
            if "idTag" in entry:
                items.append((entry["idTag"], None, "idTagInfo" in entry))
            else:
                id_token = entry["idToken"]
                items.append((id_token["idToken"], id_token["type"], "idTokenInfo" in entry))
        self.sends.append((kind, version, len(items)))
        if kind == "Differential" and (self.refuse_differentials or version <= self.version):
            return {"status": "Failed" if self.refuse_differentials else "VersionMismatch"}
        if len(items) > self.per_message:
            return {"status": "Failed"}
        entries = {} if kind == "Full" else dict(self.entries)
        for name, kind_of_token, adds in items:
            if adds:
                entries[name] = kind_of_token
            else:
                entries.pop(name, None)
        self.entries, self.version = entries, version
        return {"status": "Accepted"}


def pushing(tmp_path: Path) -> Any:
    return make_settings(tmp_path, local_list={"push": True})


def five_tags() -> FakeFlipturn:
    return FakeFlipturn(access_ids=[access_id(n) for n in range(1, 6)], page_size=100)


async def synced_pair(tmp_path: Path, fake: FakeFlipturn) -> Pair:
    """A pushing gateway whose cache is synced before any charger comes."""
    pair = await open_pair(tmp_path, pushing(tmp_path), local_list_settle_s=5.0)
    await sync(pair, fake)
    return pair


async def list_charger(
    pair: Pair, version: OcppVersion = "1.6", **kw: Any
) -> tuple[SimCharger, ListCharger]:
    cp = await pair.connect("CP-1", version, settle=False)
    keeper = ListCharger(cp, **kw)
    await pair.settle()
    return cp, keeper


@pytest.mark.parametrize("version", ["1.6", "2.0.1"])
async def test_a_full_list_after_connecting_then_differentials_after_a_sync(
    tmp_path: Path, version: Any
) -> None:
    fake = five_tags()
    pair = await synced_pair(tmp_path, fake)
    try:
        cp, keeper = await list_charger(pair, version, per_message=2)
        await pair.advance(4.9)
        assert keeper.sends == []  # the settle time after a connect
        await pair.advance(1)
        # 5 tags at 2 per message: one Full, then Differentials (2.0.1 D01.FR.11)
        assert keeper.sends == [("Full", 1, 2), ("Differential", 2, 2), ("Differential", 3, 1)]
        assert set(keeper.entries) == {tag(n) for n in range(1, 6)}
        if version != "1.6":
            assert set(keeper.entries.values()) == {"ISO14443"}
        assert pair.local_list.describe("CP-1") == {
            "owner": "gateway", "version": 3, "entries": 5, "truncated": False,
        }  # fmt: skip
        # Flipturn revokes tag 2, deletes tag 3, adds tag 9: Differentials only.
        fake.access_ids = [access_id(n) for n in (1, 4, 5, 9)] + [access_id(2, status="Revoked")]
        await sync(pair, fake)
        await pair.advance(1)
        assert [s[0] for s in keeper.sends[3:]] == ["Differential", "Differential"]
        assert set(keeper.entries) == {tag(n) for n in (1, 4, 5, 9)}
        assert pair.local_list.describe("CP-1")["entries"] == 4
        # None of it is the cloud's business.
        assert not [f for f in pair.cloud.frames("CP-1") if f[0] != 2]
        assert pair.cloud.calls("CP-1") == []
        assert cp.max_outstanding == 1  # one CALL at a time in the charger's slot
    finally:
        await pair.close()


async def test_no_resend_when_the_version_matches_and_a_full_list_when_it_does_not(
    tmp_path: Path,
) -> None:
    fake = five_tags()
    pair = await synced_pair(tmp_path, fake)
    try:
        cp, keeper = await list_charger(pair)
        await pair.advance(6)
        assert keeper.sends == [("Full", 1, 5)]
        pair = await pair.restart()  # across a restart: same version, same tags
        cp = await pair.connect("CP-1", settle=False)
        old, keeper = keeper, ListCharger(cp)
        keeper.version, keeper.entries = old.version, old.entries
        await pair.advance(6)
        assert keeper.version_reads == 1 and keeper.sends == []  # asked, nothing sent
        assert cp.link is not None
        cp.link.far.close(1000, "reboot")
        keeper.version, keeper.entries = 0, {}  # e.g. a factory reset
        await pair.connect("CP-1", settle=False)
        await pair.advance(6)
        assert keeper.sends == [("Full", 2, 5)]
        assert len(keeper.entries) == 5
    finally:
        await pair.close()


async def test_the_cloud_s_send_local_list_takes_ownership(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    fake = five_tags()
    pair = await synced_pair(tmp_path, fake)
    try:
        cp, keeper = await list_charger(pair)
        await pair.advance(6)
        assert len(keeper.entries) == 5  # pushed while online too
        cloud_list = {
            "listVersion": 40,
            "updateType": "Full",
            "localAuthorizationList": [{"idTag": "CLOUD1", "idTagInfo": {"status": "Accepted"}}],
        }
        call = pair.cloud.call("CP-1", "SendLocalList", cloud_list)
        await pair.settle()
        assert cp.calls_received[-1] == [2, call, "SendLocalList", cloud_list]
        assert pair.cloud.answer_to("CP-1", call) == [3, call, {"status": "Accepted"}]
        assert keeper.entries == {"CLOUD1": None}
        fake.access_ids = [*fake.access_ids, access_id(8)]
        await sync(pair, fake)
        await pair.advance(6)
        assert keeper.entries == {"CLOUD1": None} and keeper.version == 40
        assert pair.local_list.describe("CP-1") == {
            "owner": "cloud", "version": 40, "entries": 1, "truncated": False,
        }  # fmt: skip
        pair = await pair.restart()  # persisted: not even asked
        cp = await pair.connect("CP-1", settle=False)
        reads, keeper = keeper.version_reads, ListCharger(cp)
        await pair.advance(6)
        assert keeper.version_reads == 0 and keeper.sends == [] and reads == 1
        assert pair.local_list.describe("CP-1")["owner"] == "cloud"
    finally:
        await pair.close()
    assert any("owns this charger's local authorization list" in r.message for r in caplog.records)


async def test_a_refused_differential_is_followed_by_a_full_update(tmp_path: Path) -> None:
    fake = five_tags()
    pair = await synced_pair(tmp_path, fake)
    try:
        _, keeper = await list_charger(pair)
        await pair.advance(6)
        keeper.refuse_differentials = True
        fake.access_ids = [*fake.access_ids, access_id(9)]
        await sync(pair, fake)
        await pair.advance(1)
        assert [s[0] for s in keeper.sends] == ["Full", "Differential", "Full"]
        assert set(keeper.entries) == {tag(n) for n in (1, 2, 3, 4, 5, 9)}
    finally:
        await pair.close()


async def test_a_boot_notification_rechecks_the_list_after_the_settle_time(
    tmp_path: Path,
) -> None:
    fake = five_tags()
    pair = await synced_pair(tmp_path, fake)
    try:
        cp, keeper = await list_charger(pair)
        await pair.advance(6)
        keeper.version, keeper.entries = 0, {}  # the charger rebooted with its list wiped
        boot = {"chargePointVendor": "V", "chargePointModel": "M"}
        assert (await pair.call(cp, "BootNotification", boot))[2]["status"] == "Accepted"
        await pair.advance(4.5)
        assert keeper.sends == [("Full", 1, 5)]
        await pair.advance(1)
        assert keeper.sends == [("Full", 1, 5), ("Full", 2, 5)]
    finally:
        await pair.close()


async def test_push_is_off_by_default(tmp_path: Path) -> None:
    async with running(tmp_path) as pair:
        assert pair.settings.local_list.push is False
        await sync(pair, five_tags())
        _, keeper = await list_charger(pair)
        await pair.advance(10)
        assert keeper.version_reads == 0 and keeper.sends == []
        assert pair.local_list.describe("CP-1")["owner"] == "none"
