"""A maintenance session: what an administrator asked, what each owner answered, what was done.

A session is one JSON document, rewritten (durably: etcd under the leader's
token, or the standalone SQLite file) at every step of the workflow, so the
next leader (or the restarted process) continues it from the last step
recorded and nothing is done twice (``workflow.py``).
"""

from __future__ import annotations

import time
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from doctor_common.api import maintenance_pb2 as mpb

S = mpb.SessionState
ACTIVE_STATES = frozenset({S.SESSION_STATE_ACCEPTED, S.SESSION_STATE_HOSTS_DISABLED, S.SESSION_STATE_OWNERS_NOTIFIED,
                           S.SESSION_STATE_REPLIES_RECEIVED, S.SESSION_STATE_INSTRUCTIONS_EXECUTED,
                           S.SESSION_STATE_HOSTS_EMPTY, S.SESSION_STATE_ROLLING_BACK})
SETTLED_STATES = frozenset({S.SESSION_STATE_IN_MAINTENANCE, S.SESSION_STATE_ROLLED_BACK, S.SESSION_STATE_FAILED,
                            S.SESSION_STATE_COMPLETED})
OVER_STATES = frozenset({S.SESSION_STATE_ROLLED_BACK, S.SESSION_STATE_FAILED, S.SESSION_STATE_COMPLETED})
MOVES = frozenset({mpb.INSTRUCTION_MIGRATE, mpb.INSTRUCTION_LIVE_MIGRATE})
LEAVE = mpb.INSTRUCTION_LEAVE
ALLOWED = (mpb.INSTRUCTION_MIGRATE, mpb.INSTRUCTION_LIVE_MIGRATE, mpb.INSTRUCTION_LEAVE, mpb.INSTRUCTION_OWN_ACTION,
           mpb.INSTRUCTION_NACK)
RETIRE_ALLOWED = tuple(i for i in ALLOWED if i != mpb.INSTRUCTION_LEAVE)  # retired servers leave their host


def state_name(state: int) -> str:
    return S.Name(state).removeprefix("SESSION_STATE_").lower()


@dataclass
class Outcome:
    """One server of the session: whose, where from, what its owner asked, what happened."""

    server_id: str
    project_id: str
    from_host: str
    host: str
    instruction: int = 0
    target: str = ""
    started: bool = False     # asked of the controller (a new leader checks before asking again)
    done: bool = False
    error: str = ""

    def to_proto(self) -> mpb.ServerOutcome:
        return mpb.ServerOutcome(server_id=self.server_id, project_id=self.project_id, instruction=self.instruction,
                                 from_host=self.from_host, host=self.host, done=self.done, error=self.error)


@dataclass
class Answer:
    nack: bool = False
    reason: str = ""
    by: str = ""


@dataclass
class Session:
    id: str
    hosts: list[str]
    reason: str
    requested_by: str
    reply_timeout_s: float
    empty_timeout_s: float
    created_ns: int = field(default_factory=time.time_ns)
    state: int = S.SESSION_STATE_ACCEPTED
    metadata: dict[str, str] = field(default_factory=dict)
    reply_deadline_ns: int = 0
    empty_deadline_ns: int = 0
    projects: list[str] = field(default_factory=list)
    answers: dict[str, Answer] = field(default_factory=dict)
    servers: dict[str, Outcome] = field(default_factory=dict)
    detail: str = ""
    ended_by: str = ""        # who asked to end the maintenance (or cancel the session)
    retire: list[str] = field(default_factory=list)  # a VM retirement: these servers, no host disabled

    @property
    def active(self) -> bool:
        return self.state in ACTIVE_STATES

    @property
    def over(self) -> bool:
        return self.state in OVER_STATES

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, d: dict[str, Any]) -> "Session":
        known = {f.name for f in fields(cls)}
        d = {k: v for k, v in d.items() if k in known}  # a record written by a newer version: its extras ignored
        d["answers"] = {p: Answer(**a) for p, a in d.get("answers", {}).items()}
        d["servers"] = {i: Outcome(**o) for i, o in d.get("servers", {}).items()}
        return cls(**d)

    def info(self) -> mpb.SessionInfo:
        return mpb.SessionInfo(
            session_id=self.id, state=self.state, hosts=self.hosts, reason=self.reason,
            requested_by=self.requested_by, created_unix_nanos=self.created_ns,
            reply_deadline_unix_nanos=self.reply_deadline_ns, projects=self.projects,
            answered=sorted(self.answers), servers=[o.to_proto() for o in self.servers.values()], detail=self.detail,
            metadata=self.metadata, ended_by=self.ended_by, retirement=bool(self.retire))

    def left(self) -> list[Outcome]:
        """Servers their owners chose to leave shut down on their host through the maintenance."""
        return [o for o in self.servers.values() if o.instruction == LEAVE]

    @property
    def allowed(self) -> tuple[int, ...]:
        return RETIRE_ALLOWED if self.retire else ALLOWED

    def missing(self) -> list[str]:
        """Owners who have not answered."""
        return [p for p in self.projects if p not in self.answers]
