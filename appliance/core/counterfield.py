"""How a counter is described: the metadata on each field of a counters record.

A leaf module (it imports nothing of the appliance), so that the engine's `EngineCounters`
(appliance/engine/params.py) and the records of appliance/core/counters.py declare their fields
with the same makers without an import cycle. The metadata is read only where names are listed
(status, metrics, the schema, the reports); the hot path never touches it.

Vocabulary:
- kind `total`: only grows; summed over a child's incarnations and over workers; a Prometheus counter.
- kind `gauge`: a level (sessions open now, a latency, a time stamp); never summed over incarnations.
- kind `info`: not a counter at all, details a worker passes on in its heartbeat (the status
  document shows them under the child's `info`).
- groups, where they apply: `drop` (tcpcopyctl status, "drops and give-ups"), `repair` (its
  "repairs" line), `not_completed` (why a session did not complete: the offline report),
  `not_replayed` (why a packet of the files was not replayed: the offline report), `rate`
  (per-second rates in the status document), `file` (counted by the capture-file parser,
  appliance/core/pcapfile.py, which the reader passes on), `shared` (every worker counts the same
  event, e.g. an interceptd restart each subscriber sees: over workers the largest, not the sum).
"""

from __future__ import annotations

from dataclasses import Field, dataclass, field
from typing import Any, Literal, get_args

Kind = Literal["total", "gauge", "info"]
Group = Literal["drop", "repair", "not_completed", "not_replayed", "rate", "file", "shared"]
KINDS: tuple[Kind, ...] = get_args(Kind)
GROUPS: tuple[Group, ...] = get_args(Group)
METADATA_KEY = "counter"


@dataclass(frozen=True, slots=True)
class CounterMeta:
    """What a counter is: its kind, the groups it is listed in, and one line for a human."""

    kind: Kind
    groups: frozenset[Group]
    description: str


def _meta(kind: Kind, description: str, groups: tuple[Group, ...]) -> dict[str, CounterMeta]:
    return {METADATA_KEY: CounterMeta(kind, frozenset(groups), description)}


def total(description: str, *groups: Group) -> Any:
    """A field for an integer total. Typed Any, not int: the field object is the class attribute's
    default, and mypyc (which compiles EngineCounters) checks a default typed int to be an int."""
    return field(default=0, metadata=_meta("total", description, groups))


def total_by(description: str, *groups: Group) -> dict[str, int]:
    """A field for integer totals by key (send errors by errno, the channel's counters by name):
    summed key by key; one Prometheus counter with a label."""
    return field(default_factory=dict, metadata=_meta("total", description, groups))


def gauge(description: str, *groups: Group) -> int:
    """A field for an integer level."""
    return field(default=0, metadata=_meta("gauge", description, groups))


def gauge_float(description: str, *groups: Group) -> float:
    """A field for a level that is not a whole number (milliseconds, epoch seconds)."""
    return field(default=0.0, metadata=_meta("gauge", description, groups))


def info(description: str) -> dict[str, Any]:
    """A field for details that are not counters."""
    return field(default_factory=dict, metadata=_meta("info", description, ()))


def meta_of(f: Field[Any]) -> CounterMeta:
    """The metadata of a record's field; TypeError when the field was declared without it."""
    meta = f.metadata.get(METADATA_KEY)
    if not isinstance(meta, CounterMeta):
        raise TypeError(f"counter field {f.name!r} has no CounterMeta (declare it with total(), gauge(), ...)")
    return meta
