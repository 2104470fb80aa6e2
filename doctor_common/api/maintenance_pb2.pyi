from doctor_common.api import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class SessionState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SESSION_STATE_UNSPECIFIED: _ClassVar[SessionState]
    SESSION_STATE_ACCEPTED: _ClassVar[SessionState]
    SESSION_STATE_HOSTS_DISABLED: _ClassVar[SessionState]
    SESSION_STATE_OWNERS_NOTIFIED: _ClassVar[SessionState]
    SESSION_STATE_REPLIES_RECEIVED: _ClassVar[SessionState]
    SESSION_STATE_INSTRUCTIONS_EXECUTED: _ClassVar[SessionState]
    SESSION_STATE_HOSTS_EMPTY: _ClassVar[SessionState]
    SESSION_STATE_IN_MAINTENANCE: _ClassVar[SessionState]
    SESSION_STATE_ROLLING_BACK: _ClassVar[SessionState]
    SESSION_STATE_ROLLED_BACK: _ClassVar[SessionState]
    SESSION_STATE_FAILED: _ClassVar[SessionState]
    SESSION_STATE_COMPLETED: _ClassVar[SessionState]

class Instruction(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INSTRUCTION_UNSPECIFIED: _ClassVar[Instruction]
    INSTRUCTION_MIGRATE: _ClassVar[Instruction]
    INSTRUCTION_LIVE_MIGRATE: _ClassVar[Instruction]
    INSTRUCTION_OWN_ACTION: _ClassVar[Instruction]
    INSTRUCTION_NACK: _ClassVar[Instruction]
    INSTRUCTION_LEAVE: _ClassVar[Instruction]
SESSION_STATE_UNSPECIFIED: SessionState
SESSION_STATE_ACCEPTED: SessionState
SESSION_STATE_HOSTS_DISABLED: SessionState
SESSION_STATE_OWNERS_NOTIFIED: SessionState
SESSION_STATE_REPLIES_RECEIVED: SessionState
SESSION_STATE_INSTRUCTIONS_EXECUTED: SessionState
SESSION_STATE_HOSTS_EMPTY: SessionState
SESSION_STATE_IN_MAINTENANCE: SessionState
SESSION_STATE_ROLLING_BACK: SessionState
SESSION_STATE_ROLLED_BACK: SessionState
SESSION_STATE_FAILED: SessionState
SESSION_STATE_COMPLETED: SessionState
INSTRUCTION_UNSPECIFIED: Instruction
INSTRUCTION_MIGRATE: Instruction
INSTRUCTION_LIVE_MIGRATE: Instruction
INSTRUCTION_OWN_ACTION: Instruction
INSTRUCTION_NACK: Instruction
INSTRUCTION_LEAVE: Instruction

class RetireRequest(_message.Message):
    __slots__ = ("server_ids", "reply_timeout_s", "empty_timeout_s", "reason")
    SERVER_IDS_FIELD_NUMBER: _ClassVar[int]
    REPLY_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    EMPTY_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    server_ids: _containers.RepeatedScalarFieldContainer[str]
    reply_timeout_s: int
    empty_timeout_s: int
    reason: str
    def __init__(self, server_ids: _Optional[_Iterable[str]] = ..., reply_timeout_s: _Optional[int] = ..., empty_timeout_s: _Optional[int] = ..., reason: _Optional[str] = ...) -> None: ...

class PhysicalResourceState(_message.Message):
    __slots__ = ("physical_resource_id", "physical_resource_state", "metadata")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PHYSICAL_RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    PHYSICAL_RESOURCE_STATE_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    physical_resource_id: str
    physical_resource_state: str
    metadata: _containers.ScalarMap[str, str]
    def __init__(self, physical_resource_id: _Optional[str] = ..., physical_resource_state: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ...) -> None: ...

class StateChangeRequest(_message.Message):
    __slots__ = ("physical_resource_state", "reply_timeout_s", "empty_timeout_s", "reason", "force")
    PHYSICAL_RESOURCE_STATE_FIELD_NUMBER: _ClassVar[int]
    REPLY_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    EMPTY_TIMEOUT_S_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    physical_resource_state: _containers.RepeatedCompositeFieldContainer[PhysicalResourceState]
    reply_timeout_s: int
    empty_timeout_s: int
    reason: str
    force: bool
    def __init__(self, physical_resource_state: _Optional[_Iterable[_Union[PhysicalResourceState, _Mapping]]] = ..., reply_timeout_s: _Optional[int] = ..., empty_timeout_s: _Optional[int] = ..., reason: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...

class ServerOutcome(_message.Message):
    __slots__ = ("server_id", "project_id", "instruction", "from_host", "host", "done", "error")
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    FROM_HOST_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    DONE_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    server_id: str
    project_id: str
    instruction: Instruction
    from_host: str
    host: str
    done: bool
    error: str
    def __init__(self, server_id: _Optional[str] = ..., project_id: _Optional[str] = ..., instruction: _Optional[_Union[Instruction, str]] = ..., from_host: _Optional[str] = ..., host: _Optional[str] = ..., done: _Optional[bool] = ..., error: _Optional[str] = ...) -> None: ...

class SessionInfo(_message.Message):
    __slots__ = ("session_id", "state", "hosts", "reason", "requested_by", "created_unix_nanos", "reply_deadline_unix_nanos", "projects", "answered", "servers", "detail", "metadata", "ended_by", "retirement")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    REQUESTED_BY_FIELD_NUMBER: _ClassVar[int]
    CREATED_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    REPLY_DEADLINE_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    PROJECTS_FIELD_NUMBER: _ClassVar[int]
    ANSWERED_FIELD_NUMBER: _ClassVar[int]
    SERVERS_FIELD_NUMBER: _ClassVar[int]
    DETAIL_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    ENDED_BY_FIELD_NUMBER: _ClassVar[int]
    RETIREMENT_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    state: SessionState
    hosts: _containers.RepeatedScalarFieldContainer[str]
    reason: str
    requested_by: str
    created_unix_nanos: int
    reply_deadline_unix_nanos: int
    projects: _containers.RepeatedScalarFieldContainer[str]
    answered: _containers.RepeatedScalarFieldContainer[str]
    servers: _containers.RepeatedCompositeFieldContainer[ServerOutcome]
    detail: str
    metadata: _containers.ScalarMap[str, str]
    ended_by: str
    retirement: bool
    def __init__(self, session_id: _Optional[str] = ..., state: _Optional[_Union[SessionState, str]] = ..., hosts: _Optional[_Iterable[str]] = ..., reason: _Optional[str] = ..., requested_by: _Optional[str] = ..., created_unix_nanos: _Optional[int] = ..., reply_deadline_unix_nanos: _Optional[int] = ..., projects: _Optional[_Iterable[str]] = ..., answered: _Optional[_Iterable[str]] = ..., servers: _Optional[_Iterable[_Union[ServerOutcome, _Mapping]]] = ..., detail: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., ended_by: _Optional[str] = ..., retirement: _Optional[bool] = ...) -> None: ...

class MaintenanceProgress(_message.Message):
    __slots__ = ("session", "event", "time_unix_nanos")
    SESSION_FIELD_NUMBER: _ClassVar[int]
    EVENT_FIELD_NUMBER: _ClassVar[int]
    TIME_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    session: SessionInfo
    event: str
    time_unix_nanos: int
    def __init__(self, session: _Optional[_Union[SessionInfo, _Mapping]] = ..., event: _Optional[str] = ..., time_unix_nanos: _Optional[int] = ...) -> None: ...

class StateQueryFilter(_message.Message):
    __slots__ = ("physical_resource_id", "physical_resource_state", "zone_id")
    PHYSICAL_RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    PHYSICAL_RESOURCE_STATE_FIELD_NUMBER: _ClassVar[int]
    ZONE_ID_FIELD_NUMBER: _ClassVar[int]
    physical_resource_id: _containers.RepeatedScalarFieldContainer[str]
    physical_resource_state: str
    zone_id: str
    def __init__(self, physical_resource_id: _Optional[_Iterable[str]] = ..., physical_resource_state: _Optional[str] = ..., zone_id: _Optional[str] = ...) -> None: ...

class StateQueryRequest(_message.Message):
    __slots__ = ("filter",)
    FILTER_FIELD_NUMBER: _ClassVar[int]
    filter: StateQueryFilter
    def __init__(self, filter: _Optional[_Union[StateQueryFilter, _Mapping]] = ...) -> None: ...

class PhysicalResourceStateInfo(_message.Message):
    __slots__ = ("physical_resource_id", "physical_resource_state", "firmware_version", "hypervisor_version", "zone_id", "metadata", "host_status", "session")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PHYSICAL_RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    PHYSICAL_RESOURCE_STATE_FIELD_NUMBER: _ClassVar[int]
    FIRMWARE_VERSION_FIELD_NUMBER: _ClassVar[int]
    HYPERVISOR_VERSION_FIELD_NUMBER: _ClassVar[int]
    ZONE_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    HOST_STATUS_FIELD_NUMBER: _ClassVar[int]
    SESSION_FIELD_NUMBER: _ClassVar[int]
    physical_resource_id: str
    physical_resource_state: str
    firmware_version: str
    hypervisor_version: str
    zone_id: str
    metadata: _containers.ScalarMap[str, str]
    host_status: _common_pb2.HostStatus
    session: SessionInfo
    def __init__(self, physical_resource_id: _Optional[str] = ..., physical_resource_state: _Optional[str] = ..., firmware_version: _Optional[str] = ..., hypervisor_version: _Optional[str] = ..., zone_id: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., host_status: _Optional[_Union[_common_pb2.HostStatus, str]] = ..., session: _Optional[_Union[SessionInfo, _Mapping]] = ...) -> None: ...

class StateQueryResponse(_message.Message):
    __slots__ = ("physical_resource_info",)
    PHYSICAL_RESOURCE_INFO_FIELD_NUMBER: _ClassVar[int]
    physical_resource_info: _containers.RepeatedCompositeFieldContainer[PhysicalResourceStateInfo]
    def __init__(self, physical_resource_info: _Optional[_Iterable[_Union[PhysicalResourceStateInfo, _Mapping]]] = ...) -> None: ...

class WatchRequest(_message.Message):
    __slots__ = ("session_id",)
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    def __init__(self, session_id: _Optional[str] = ...) -> None: ...

class ServerInstruction(_message.Message):
    __slots__ = ("server_id", "instruction", "target_host")
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTION_FIELD_NUMBER: _ClassVar[int]
    TARGET_HOST_FIELD_NUMBER: _ClassVar[int]
    server_id: str
    instruction: Instruction
    target_host: str
    def __init__(self, server_id: _Optional[str] = ..., instruction: _Optional[_Union[Instruction, str]] = ..., target_host: _Optional[str] = ...) -> None: ...

class MaintenanceReply(_message.Message):
    __slots__ = ("session_id", "instructions", "nack", "reason")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    INSTRUCTIONS_FIELD_NUMBER: _ClassVar[int]
    NACK_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    instructions: _containers.RepeatedCompositeFieldContainer[ServerInstruction]
    nack: bool
    reason: str
    def __init__(self, session_id: _Optional[str] = ..., instructions: _Optional[_Iterable[_Union[ServerInstruction, _Mapping]]] = ..., nack: _Optional[bool] = ..., reason: _Optional[str] = ...) -> None: ...

class MaintenanceReplyAck(_message.Message):
    __slots__ = ("session_id", "state")
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    session_id: str
    state: SessionState
    def __init__(self, session_id: _Optional[str] = ..., state: _Optional[_Union[SessionState, str]] = ...) -> None: ...

class MaintenanceNotification(_message.Message):
    __slots__ = ("notification_id", "sequence", "event_time_unix_nanos", "virtual_resource_info", "physical_resource_info", "session_id", "state", "reply_deadline_unix_nanos", "allowed", "reason", "servers")
    NOTIFICATION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_RESOURCE_INFO_FIELD_NUMBER: _ClassVar[int]
    PHYSICAL_RESOURCE_INFO_FIELD_NUMBER: _ClassVar[int]
    SESSION_ID_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    REPLY_DEADLINE_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    ALLOWED_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    SERVERS_FIELD_NUMBER: _ClassVar[int]
    notification_id: str
    sequence: int
    event_time_unix_nanos: int
    virtual_resource_info: _containers.RepeatedCompositeFieldContainer[_common_pb2.VirtualResourceInfo]
    physical_resource_info: _containers.RepeatedCompositeFieldContainer[_common_pb2.PhysicalResourceInfo]
    session_id: str
    state: SessionState
    reply_deadline_unix_nanos: int
    allowed: _containers.RepeatedScalarFieldContainer[Instruction]
    reason: str
    servers: _containers.RepeatedCompositeFieldContainer[ServerOutcome]
    def __init__(self, notification_id: _Optional[str] = ..., sequence: _Optional[int] = ..., event_time_unix_nanos: _Optional[int] = ..., virtual_resource_info: _Optional[_Iterable[_Union[_common_pb2.VirtualResourceInfo, _Mapping]]] = ..., physical_resource_info: _Optional[_Iterable[_Union[_common_pb2.PhysicalResourceInfo, _Mapping]]] = ..., session_id: _Optional[str] = ..., state: _Optional[_Union[SessionState, str]] = ..., reply_deadline_unix_nanos: _Optional[int] = ..., allowed: _Optional[_Iterable[_Union[Instruction, str]]] = ..., reason: _Optional[str] = ..., servers: _Optional[_Iterable[_Union[ServerOutcome, _Mapping]]] = ...) -> None: ...
