"""Which OCPP version a charger is answered with, and what the cloud's choice means: pure decisions.

The cloud decides the version, not the charger alone (docs/ocpp-versions.md, "Negotiation"). The
gateway remembers, per charge point id and across restarts, the version the cloud last selected:

- :func:`plan_answer`: at a charger's handshake, answer at once with the remembered version when
  the charger offers it (no wait on the cloud: a power-restore storm stays as fast as without the
  cloud), else ask the cloud with the charger's whole list of versions the gateway speaks, in the
  charger's order (RFC 6455 §4.2.2, OCPP 2.0.1/2.1 Part 4 §3.1.2: the client lists its
  subprotocols by preference, the server selects one), answering the charger's first if the cloud
  does not choose in time or cannot be reached;
- :func:`link_offer`: what a charger's cloud link offers — the charger's version, and the
  charger's whole list once the cloud refused that version;
- :func:`cloud_selected`: what the cloud's selection means for the charger — the version to
  remember, and the charger's version the cloud refused (the charger is then closed with 1012 so
  that it reconnects and is answered the cloud's version);
- :func:`unspoken_reason`: why a message stored under another version than its link's is a dead
  letter. Versions are never translated.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from gateway.ocpp.frames import OcppVersion

__all__ = [
    "NEGOTIATE_WAIT_S",
    "SUBPROTOCOLS",
    "AnswerNow",
    "AskCloud",
    "CloudChoice",
    "VersionRecord",
    "cloud_selected",
    "link_offer",
    "offered_versions",
    "plan_answer",
    "subprotocol",
    "unspoken_reason",
]

# How long a charger's handshake waits for the cloud's choice, the link's pacing turn included.
NEGOTIATE_WAIT_S: Final = 2.0

# OCPP 2.1 Part 4 §3.1.2 (and 2.0.1 Part 4, 1.6 OCPP-J §3.2): the subprotocol names.
SUBPROTOCOLS: Final[dict[str, OcppVersion]] = {
    "ocpp2.1": "2.1",
    "ocpp2.0.1": "2.0.1",
    "ocpp1.6": "1.6",
}


def subprotocol(version: OcppVersion) -> str:
    """The WebSocket subprotocol name of ``version`` (``ocpp2.0.1``)."""
    return f"ocpp{version}"


def offered_versions(subprotocols: Iterable[str]) -> tuple[OcppVersion, ...]:
    """The versions the gateway speaks among the charger's offered subprotocols, in the charger's
    order of preference, each once."""
    out: list[OcppVersion] = []
    for name in subprotocols:
        version = SUBPROTOCOLS.get(name)
        if version is not None and version not in out:
            out.append(version)
    return tuple(out)


# Nearly every record refuses nothing: one empty set for them all, not one each.
_NONE_REFUSED: frozenset[OcppVersion] = frozenset()


@dataclass(frozen=True, slots=True)
class VersionRecord:
    """What the gateway remembers of one charger: the version the cloud last selected, and the
    versions the cloud refused in favour of it (messages stored under those are dead letters)."""

    version: OcppVersion
    refused: frozenset[OcppVersion] = _NONE_REFUSED


@dataclass(frozen=True, slots=True)
class AnswerNow:
    """Answer the charger with ``version`` at once (None: it offers nothing the gateway speaks;
    the handshake completes without a subprotocol and the gateway closes, OCPP-J §3.2)."""

    version: OcppVersion | None


@dataclass(frozen=True, slots=True)
class AskCloud:
    """Offer the cloud ``offer`` (the charger's order) and answer the charger with the version it
    selects; ``fallback`` (the charger's first) past the wait or when the cloud is unreachable."""

    offer: tuple[OcppVersion, ...]
    fallback: OcppVersion


def plan_answer(
    offered: Sequence[OcppVersion], remembered: OcppVersion | None, *, cloud: bool
) -> AnswerNow | AskCloud:
    """How to answer a charger that offers ``offered`` (see :func:`offered_versions`).

    ``remembered``: the version the cloud last selected for this charger; ``cloud``: an upstream is
    configured (standalone, the charger's first is answered as always). A charger offering one version gets it at once: the cloud's answer could not
    change it (a cloud refusing it is found by the link, see :func:`cloud_selected`).
    """
    if not offered:
        return AnswerNow(None)
    if not cloud:
        return AnswerNow(offered[0])
    if remembered in offered:
        return AnswerNow(remembered)
    if len(offered) == 1:
        return AnswerNow(offered[0])
    return AskCloud(tuple(offered), offered[0])


def link_offer(
    version: OcppVersion, offered: Sequence[OcppVersion], *, refused: bool
) -> tuple[OcppVersion, ...]:
    """What a charger's cloud link offers on its next attempt.

    ``version``: the charger's (the link carries its frames unchanged); ``offered``: the charger's
    list; ``refused``: the cloud refused the last attempt, which offered ``version`` alone. Then the
    whole list, in the charger's order, finds which version the cloud speaks.
    """
    if refused and len(offered) > 1 and version in offered:
        return tuple(offered)
    return (version,)


@dataclass(frozen=True, slots=True)
class CloudChoice:
    """What the cloud's selection means. ``remember``: the record to keep (None: unchanged);
    ``refused``: the charger's version the cloud did not select — its link cannot carry the
    charger's frames, the charger is closed with 1012 once nothing is in flight (if it is
    connected), and messages stored under it are dead letters."""

    remember: VersionRecord | None
    refused: OcppVersion | None


def cloud_selected(
    version: OcppVersion, selected: OcppVersion, known: VersionRecord | None
) -> CloudChoice:
    """The cloud selected ``selected`` for a charger whose link speaks ``version``; ``known``: the
    record kept so far."""
    refused = set(known.refused) if known is not None and known.version == selected else set()
    refused.discard(selected)
    if selected != version:
        refused.add(version)
    record = VersionRecord(selected, frozenset(refused) if refused else _NONE_REFUSED)
    return CloudChoice(
        remember=None if record == known else record,
        refused=None if selected == version else version,
    )


def unspoken_reason(
    stored: OcppVersion, link: OcppVersion, refused: frozenset[OcppVersion]
) -> str | None:
    """Why a message stored under ``stored`` cannot go on a link speaking ``link`` (None: it can).

    Versions are never translated: such a message is a dead letter.
    """
    if stored == link:
        return None
    if stored in refused:
        return f"cloud does not speak {subprotocol(stored)}"
    return f"stored under {subprotocol(stored)}; the cloud link speaks {subprotocol(link)}"
