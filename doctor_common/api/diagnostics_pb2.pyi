from doctor_common.api import agent_pb2 as _agent_pb2
from doctor_common.api import common_pb2 as _common_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class GetStatusRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class AgentInfo(_message.Message):
    __slots__ = ("host_id", "connected", "liveness", "boot_id", "agent_version", "last_seen_unix_nanos", "peer", "last_sequence", "components", "health")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    LIVENESS_FIELD_NUMBER: _ClassVar[int]
    BOOT_ID_FIELD_NUMBER: _ClassVar[int]
    AGENT_VERSION_FIELD_NUMBER: _ClassVar[int]
    LAST_SEEN_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    PEER_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    COMPONENTS_FIELD_NUMBER: _ClassVar[int]
    HEALTH_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    connected: bool
    liveness: str
    boot_id: str
    agent_version: str
    last_seen_unix_nanos: int
    peer: str
    last_sequence: int
    components: _containers.RepeatedCompositeFieldContainer[_agent_pb2.ComponentState]
    health: _agent_pb2.AgentHealth
    def __init__(self, host_id: _Optional[str] = ..., connected: _Optional[bool] = ..., liveness: _Optional[str] = ..., boot_id: _Optional[str] = ..., agent_version: _Optional[str] = ..., last_seen_unix_nanos: _Optional[int] = ..., peer: _Optional[str] = ..., last_sequence: _Optional[int] = ..., components: _Optional[_Iterable[_Union[_agent_pb2.ComponentState, _Mapping]]] = ..., health: _Optional[_Union[_agent_pb2.AgentHealth, _Mapping]] = ...) -> None: ...

class SubscriptionInfo(_message.Message):
    __slots__ = ("subscription_id", "principal", "queue_depth", "delivered", "connected", "last_delivered")
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    PRINCIPAL_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    DELIVERED_FIELD_NUMBER: _ClassVar[int]
    CONNECTED_FIELD_NUMBER: _ClassVar[int]
    LAST_DELIVERED_FIELD_NUMBER: _ClassVar[int]
    subscription_id: str
    principal: str
    queue_depth: int
    delivered: int
    connected: bool
    last_delivered: int
    def __init__(self, subscription_id: _Optional[str] = ..., principal: _Optional[str] = ..., queue_depth: _Optional[int] = ..., delivered: _Optional[int] = ..., connected: _Optional[bool] = ..., last_delivered: _Optional[int] = ...) -> None: ...

class StatusReport(_message.Message):
    __slots__ = ("node_id", "role", "leader_endpoint", "version", "started_unix_nanos", "protobuf_implementation", "controller", "agents", "active_alarms", "subscriptions", "last_sequence", "leader_token", "guard")
    NODE_ID_FIELD_NUMBER: _ClassVar[int]
    ROLE_FIELD_NUMBER: _ClassVar[int]
    LEADER_ENDPOINT_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STARTED_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    PROTOBUF_IMPLEMENTATION_FIELD_NUMBER: _ClassVar[int]
    CONTROLLER_FIELD_NUMBER: _ClassVar[int]
    AGENTS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_ALARMS_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTIONS_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    LEADER_TOKEN_FIELD_NUMBER: _ClassVar[int]
    GUARD_FIELD_NUMBER: _ClassVar[int]
    node_id: str
    role: str
    leader_endpoint: str
    version: str
    started_unix_nanos: int
    protobuf_implementation: str
    controller: str
    agents: _containers.RepeatedCompositeFieldContainer[AgentInfo]
    active_alarms: _containers.RepeatedCompositeFieldContainer[_common_pb2.Fault]
    subscriptions: _containers.RepeatedCompositeFieldContainer[SubscriptionInfo]
    last_sequence: int
    leader_token: int
    guard: GuardStatus
    def __init__(self, node_id: _Optional[str] = ..., role: _Optional[str] = ..., leader_endpoint: _Optional[str] = ..., version: _Optional[str] = ..., started_unix_nanos: _Optional[int] = ..., protobuf_implementation: _Optional[str] = ..., controller: _Optional[str] = ..., agents: _Optional[_Iterable[_Union[AgentInfo, _Mapping]]] = ..., active_alarms: _Optional[_Iterable[_Union[_common_pb2.Fault, _Mapping]]] = ..., subscriptions: _Optional[_Iterable[_Union[SubscriptionInfo, _Mapping]]] = ..., last_sequence: _Optional[int] = ..., leader_token: _Optional[int] = ..., guard: _Optional[_Union[GuardStatus, _Mapping]] = ...) -> None: ...

class GuardCause(_message.Message):
    __slots__ = ("cause", "resource", "description", "hosts")
    CAUSE_FIELD_NUMBER: _ClassVar[int]
    RESOURCE_FIELD_NUMBER: _ClassVar[int]
    DESCRIPTION_FIELD_NUMBER: _ClassVar[int]
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    cause: str
    resource: str
    description: str
    hosts: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, cause: _Optional[str] = ..., resource: _Optional[str] = ..., description: _Optional[str] = ..., hosts: _Optional[_Iterable[str]] = ...) -> None: ...

class GuardStatus(_message.Message):
    __slots__ = ("enabled", "behind", "loop_lag_ms", "worst_loop_lag_ms", "read_delay_ms", "lost_ms", "causes", "held", "waiting", "fences_allowed")
    ENABLED_FIELD_NUMBER: _ClassVar[int]
    BEHIND_FIELD_NUMBER: _ClassVar[int]
    LOOP_LAG_MS_FIELD_NUMBER: _ClassVar[int]
    WORST_LOOP_LAG_MS_FIELD_NUMBER: _ClassVar[int]
    READ_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    LOST_MS_FIELD_NUMBER: _ClassVar[int]
    CAUSES_FIELD_NUMBER: _ClassVar[int]
    HELD_FIELD_NUMBER: _ClassVar[int]
    WAITING_FIELD_NUMBER: _ClassVar[int]
    FENCES_ALLOWED_FIELD_NUMBER: _ClassVar[int]
    enabled: bool
    behind: bool
    loop_lag_ms: float
    worst_loop_lag_ms: float
    read_delay_ms: float
    lost_ms: float
    causes: _containers.RepeatedCompositeFieldContainer[GuardCause]
    held: int
    waiting: int
    fences_allowed: int
    def __init__(self, enabled: _Optional[bool] = ..., behind: _Optional[bool] = ..., loop_lag_ms: _Optional[float] = ..., worst_loop_lag_ms: _Optional[float] = ..., read_delay_ms: _Optional[float] = ..., lost_ms: _Optional[float] = ..., causes: _Optional[_Iterable[_Union[GuardCause, _Mapping]]] = ..., held: _Optional[int] = ..., waiting: _Optional[int] = ..., fences_allowed: _Optional[int] = ...) -> None: ...

class GetTimelinesRequest(_message.Message):
    __slots__ = ("limit",)
    LIMIT_FIELD_NUMBER: _ClassVar[int]
    limit: int
    def __init__(self, limit: _Optional[int] = ...) -> None: ...

class FaultTimeline(_message.Message):
    __slots__ = ("fault_id", "host_id", "fault_type", "timeline", "servers", "fenced")
    FAULT_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    FAULT_TYPE_FIELD_NUMBER: _ClassVar[int]
    TIMELINE_FIELD_NUMBER: _ClassVar[int]
    SERVERS_FIELD_NUMBER: _ClassVar[int]
    FENCED_FIELD_NUMBER: _ClassVar[int]
    fault_id: str
    host_id: str
    fault_type: str
    timeline: _common_pb2.Timeline
    servers: int
    fenced: bool
    def __init__(self, fault_id: _Optional[str] = ..., host_id: _Optional[str] = ..., fault_type: _Optional[str] = ..., timeline: _Optional[_Union[_common_pb2.Timeline, _Mapping]] = ..., servers: _Optional[int] = ..., fenced: _Optional[bool] = ...) -> None: ...

class GetTimelinesResponse(_message.Message):
    __slots__ = ("timelines",)
    TIMELINES_FIELD_NUMBER: _ClassVar[int]
    timelines: _containers.RepeatedCompositeFieldContainer[FaultTimeline]
    def __init__(self, timelines: _Optional[_Iterable[_Union[FaultTimeline, _Mapping]]] = ...) -> None: ...

class ListHostsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class HostInfo(_message.Message):
    __slots__ = ("host_id", "host_status", "forced_down", "disabled", "disabled_reason", "liveness", "servers", "active_alarms")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_STATUS_FIELD_NUMBER: _ClassVar[int]
    FORCED_DOWN_FIELD_NUMBER: _ClassVar[int]
    DISABLED_FIELD_NUMBER: _ClassVar[int]
    DISABLED_REASON_FIELD_NUMBER: _ClassVar[int]
    LIVENESS_FIELD_NUMBER: _ClassVar[int]
    SERVERS_FIELD_NUMBER: _ClassVar[int]
    ACTIVE_ALARMS_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    host_status: _common_pb2.HostStatus
    forced_down: bool
    disabled: bool
    disabled_reason: str
    liveness: str
    servers: int
    active_alarms: _containers.RepeatedCompositeFieldContainer[_common_pb2.Fault]
    def __init__(self, host_id: _Optional[str] = ..., host_status: _Optional[_Union[_common_pb2.HostStatus, str]] = ..., forced_down: _Optional[bool] = ..., disabled: _Optional[bool] = ..., disabled_reason: _Optional[str] = ..., liveness: _Optional[str] = ..., servers: _Optional[int] = ..., active_alarms: _Optional[_Iterable[_Union[_common_pb2.Fault, _Mapping]]] = ...) -> None: ...

class ListHostsResponse(_message.Message):
    __slots__ = ("hosts",)
    HOSTS_FIELD_NUMBER: _ClassVar[int]
    hosts: _containers.RepeatedCompositeFieldContainer[HostInfo]
    def __init__(self, hosts: _Optional[_Iterable[_Union[HostInfo, _Mapping]]] = ...) -> None: ...

class EnableHostRequest(_message.Message):
    __slots__ = ("host_id", "force")
    HOST_ID_FIELD_NUMBER: _ClassVar[int]
    FORCE_FIELD_NUMBER: _ClassVar[int]
    host_id: str
    force: bool
    def __init__(self, host_id: _Optional[str] = ..., force: _Optional[bool] = ...) -> None: ...
