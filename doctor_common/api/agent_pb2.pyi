from doctor_common.api import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ComponentStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    COMPONENT_STATUS_UNSPECIFIED: _ClassVar[ComponentStatus]
    COMPONENT_STATUS_OK: _ClassVar[ComponentStatus]
    COMPONENT_STATUS_WARNING: _ClassVar[ComponentStatus]
    COMPONENT_STATUS_FAULT: _ClassVar[ComponentStatus]
    COMPONENT_STATUS_UNKNOWN: _ClassVar[ComponentStatus]
COMPONENT_STATUS_UNSPECIFIED: ComponentStatus
COMPONENT_STATUS_OK: ComponentStatus
COMPONENT_STATUS_WARNING: ComponentStatus
COMPONENT_STATUS_FAULT: ComponentStatus
COMPONENT_STATUS_UNKNOWN: ComponentStatus

class ComponentState(_message.Message):
    __slots__ = ("component", "checker", "status", "fault_type", "severity", "description", "details", "since_unix_nanos")
    class DetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    COMPONENT_FIELD_NUMBER: _ClassVar[int]
    CHECKER_FIELD_NUMBER: _ClassVar[int]
    STATUS_FIELD_NUMBER: _ClassVar[int]
    FAULT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    DETAILS_FIELD_NUMBER: _ClassVar[int]
    SINCE_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    component: str
    checker: str
    status: ComponentStatus
    fault_type: str
    severity: _common_pb2.Severity
    description: str
    details: _containers.ScalarMap[str, str]
    since_unix_nanos: int
    def __init__(self, component: _Optional[str] = ..., checker: _Optional[str] = ..., status: _Optional[_Union[ComponentStatus, str]] = ..., fault_type: _Optional[str] = ..., severity: _Optional[_Union[_common_pb2.Severity, str]] = ..., description: _Optional[str] = ..., details: _Optional[_Mapping[str, str]] = ..., since_unix_nanos: _Optional[int] = ...) -> None: ...

class Event(_message.Message):
    __slots__ = ("sequence", "state", "observed_unix_nanos", "sent_unix_nanos")
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    OBSERVED_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    SENT_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    state: ComponentState
    observed_unix_nanos: int
    sent_unix_nanos: int
    def __init__(self, sequence: _Optional[int] = ..., state: _Optional[_Union[ComponentState, _Mapping]] = ..., observed_unix_nanos: _Optional[int] = ..., sent_unix_nanos: _Optional[int] = ...) -> None: ...

class Hello(_message.Message):
    __slots__ = ("host_id", "boot_id", "agent_version", "components", "last_sequence", "host_boot_id", "facts")
    class FactsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    HOST_BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    FACTS_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    boot_id: str
    agent_version: str
    components: _containers.RepeatedCompositeFieldContainer[ComponentState]
    last_sequence: int
    host_boot_id: str
    facts: _containers.ScalarMap[str, str]
    def __init__(self, host_id: _Optional[str] = ..., boot_id: _Optional[str] = ..., agent_version: _Optional[str] = ..., components: _Optional[_Iterable[_Union[ComponentState, _Mapping]]] = ..., last_sequence: _Optional[int] = ..., host_boot_id: _Optional[str] = ..., facts: _Optional[_Mapping[str, str]] = ...) -> None: ...

class EventBatch(_message.Message):
    __slots__ = ("events",)
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    events: _containers.RepeatedCompositeFieldContainer[Event]
    def __init__(self, events: _Optional[_Iterable[_Union[Event, _Mapping]]] = ...) -> None: ...

class Heartbeat(_message.Message):
    __slots__ = ("sent_unix_nanos",)
    SENT_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    sent_unix_nanos: int
    def __init__(self, sent_unix_nanos: _Optional[int] = ...) -> None: ...

class Goodbye(_message.Message):
    __slots__ = ("reason",)
    REASON_FIELD_NUMBER: _ClassVar[int]
    reason: str
    def __init__(self, reason: _Optional[str] = ...) -> None: ...

class CheckRun(_message.Message):
    __slots__ = ("started_unix_nanos", "duration_ms", "outcome", "detail")
    STARTED_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    OUTCOME_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    started_unix_nanos: int
    duration_ms: float
    outcome: str
    detail: str
    def __init__(self, started_unix_nanos: _Optional[int] = ..., duration_ms: _Optional[float] = ..., outcome: _Optional[str] = ..., detail: _Optional[str] = ...) -> None: ...

class CheckRuns(_message.Message):
    __slots__ = ("check", "runs", "failures", "mean_duration_ms", "recent")
    CHECK_FIELD_NUMBER: _ClassVar[int]
    RUNS_FIELD_NUMBER: _ClassVar[int]
    FAILURES_FIELD_NUMBER: _ClassVar[int]
    MEAN_DURATION_MS_FIELD_NUMBER: _ClassVar[int]
    RECENT_FIELD_NUMBER: _ClassVar[int]
    check: str
    runs: int
    failures: int
    mean_duration_ms: float
    recent: _containers.RepeatedCompositeFieldContainer[CheckRun]
    def __init__(self, check: _Optional[str] = ..., runs: _Optional[int] = ..., failures: _Optional[int] = ..., mean_duration_ms: _Optional[float] = ..., recent: _Optional[_Iterable[_Union[CheckRun, _Mapping]]] = ...) -> None: ...

class CheckerHealth(_message.Message):
    __slots__ = ("checker", "restarts", "last_crash", "checks")
    CHECKER_FIELD_NUMBER: _ClassVar[int]
    RESTARTS_FIELD_NUMBER: _ClassVar[int]
    LAST_CRASH_FIELD_NUMBER: _ClassVar[int]
    CHECKS_FIELD_NUMBER: _ClassVar[int]
    checker: str
    restarts: int
    last_crash: str
    checks: _containers.RepeatedCompositeFieldContainer[CheckRuns]
    def __init__(self, checker: _Optional[str] = ..., restarts: _Optional[int] = ..., last_crash: _Optional[str] = ..., checks: _Optional[_Iterable[_Union[CheckRuns, _Mapping]]] = ...) -> None: ...

class AgentHealth(_message.Message):
    __slots__ = ("checkers", "collected_unix_nanos", "loops_not_alive")
    CHECKERS_FIELD_NUMBER: _ClassVar[int]
    COLLECTED_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    LOOPS_NOT_ALIVE_FIELD_NUMBER: _ClassVar[int]
    checkers: _containers.RepeatedCompositeFieldContainer[CheckerHealth]
    collected_unix_nanos: int
    loops_not_alive: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, checkers: _Optional[_Iterable[_Union[CheckerHealth, _Mapping]]] = ..., collected_unix_nanos: _Optional[int] = ..., loops_not_alive: _Optional[_Iterable[str]] = ...) -> None: ...

class AgentMessage(_message.Message):
    __slots__ = ("hello", "events", "heartbeat", "goodbye", "health")
    HELLO_FIELD_NUMBER: _ClassVar[int]
    EVENTS_FIELD_NUMBER: _ClassVar[int]
    HEARTBEAT_FIELD_NUMBER: _ClassVar[int]
    GOODBYE_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    hello: Hello
    events: EventBatch
    heartbeat: Heartbeat
    goodbye: Goodbye
    health: AgentHealth
    def __init__(self, hello: _Optional[_Union[Hello, _Mapping]] = ..., events: _Optional[_Union[EventBatch, _Mapping]] = ..., heartbeat: _Optional[_Union[Heartbeat, _Mapping]] = ..., goodbye: _Optional[_Union[Goodbye, _Mapping]] = ..., health: _Optional[_Union[AgentHealth, _Mapping]] = ...) -> None: ...

class Ack(_message.Message):
    __slots__ = ("sequence",)
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    sequence: int
    def __init__(self, sequence: _Optional[int] = ...) -> None: ...

class Redirect(_message.Message):
    __slots__ = ("leader_endpoint",)
    LEADER_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    leader_endpoint: str
    def __init__(self, leader_endpoint: _Optional[str] = ...) -> None: ...

class ConfigHint(_message.Message):
    __slots__ = ("heartbeat_interval_ms",)
    HEARTBEAT_INTERVAL_MS_FIELD_NUMBER: _ClassVar[int]
    heartbeat_interval_ms: int
    def __init__(self, heartbeat_interval_ms: _Optional[int] = ...) -> None: ...

class Resync(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class GatewayMessage(_message.Message):
    __slots__ = ("ack", "redirect", "config", "resync")
    ACK_FIELD_NUMBER: _ClassVar[int]
    REDIRECT_FIELD_NUMBER: _ClassVar[int]
    CONFIG_FIELD_NUMBER: _ClassVar[int]
    RESYNC_FIELD_NUMBER: _ClassVar[int]
    ack: Ack
    redirect: Redirect
    config: ConfigHint
    resync: Resync
    def __init__(self, ack: _Optional[_Union[Ack, _Mapping]] = ..., redirect: _Optional[_Union[Redirect, _Mapping]] = ..., config: _Optional[_Union[ConfigHint, _Mapping]] = ..., resync: _Optional[_Union[Resync, _Mapping]] = ...) -> None: ...

class JsonEventReport(_message.Message):
    __slots__ = ("json",)
    JSON_FIELD_NUMBER: _ClassVar[int]
    json: str
    def __init__(self, json: _Optional[str] = ...) -> None: ...

class JsonEventAck(_message.Message):
    __slots__ = ("accepted",)
    ACCEPTED_FIELD_NUMBER: _ClassVar[int]
    accepted: int
    def __init__(self, accepted: _Optional[int] = ...) -> None: ...
