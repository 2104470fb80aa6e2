from doctor_common.api import common_pb2 as _common_pb2
from doctor_common.api import maintenance_pb2 as _maintenance_pb2
from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class IncidentPhase(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    INCIDENT_PHASE_UNSPECIFIED: _ClassVar[IncidentPhase]
    INCIDENT_PHASE_SUSPECTED: _ClassVar[IncidentPhase]
    INCIDENT_PHASE_HELD: _ClassVar[IncidentPhase]
    INCIDENT_PHASE_FENCED: _ClassVar[IncidentPhase]
    INCIDENT_PHASE_MARKED_DOWN: _ClassVar[IncidentPhase]
    INCIDENT_PHASE_UNFENCED: _ClassVar[IncidentPhase]
    INCIDENT_PHASE_WITHDRAWN: _ClassVar[IncidentPhase]
    INCIDENT_PHASE_CLOSED: _ClassVar[IncidentPhase]
INCIDENT_PHASE_UNSPECIFIED: IncidentPhase
INCIDENT_PHASE_SUSPECTED: IncidentPhase
INCIDENT_PHASE_HELD: IncidentPhase
INCIDENT_PHASE_FENCED: IncidentPhase
INCIDENT_PHASE_MARKED_DOWN: IncidentPhase
INCIDENT_PHASE_UNFENCED: IncidentPhase
INCIDENT_PHASE_WITHDRAWN: IncidentPhase
INCIDENT_PHASE_CLOSED: IncidentPhase

class SubscribeFilter(_message.Message):
    __slots__ = ("virtual_resource_type", "virtual_resource_id", "fault_type", "min_severity")
    VIRTUAL_RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    FAULT_TYPE_FIELD_NUMBER: _ClassVar[int]
    MIN_SEVERITY_FIELD_NUMBER: _ClassVar[int]
    virtual_resource_type: _containers.RepeatedScalarFieldContainer[str]
    virtual_resource_id: _containers.RepeatedScalarFieldContainer[str]
    fault_type: _containers.RepeatedScalarFieldContainer[str]
    min_severity: _common_pb2.Severity
    def __init__(self, virtual_resource_type: _Optional[_Iterable[str]] = ..., virtual_resource_id: _Optional[_Iterable[str]] = ..., fault_type: _Optional[_Iterable[str]] = ..., min_severity: _Optional[_Union[_common_pb2.Severity, str]] = ...) -> None: ...

class SubscribeRequest(_message.Message):
    __slots__ = ("filter", "resume_after", "subscription_id", "max_batch")
    FILTER_FIELD_NUMBER: _ClassVar[int]
    RESUME_AFTER_FIELD_NUMBER: _ClassVar[int]
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    MAX_BATCH_FIELD_NUMBER: _ClassVar[int]
    filter: SubscribeFilter
    resume_after: int
    subscription_id: str
    max_batch: int
    def __init__(self, filter: _Optional[_Union[SubscribeFilter, _Mapping]] = ..., resume_after: _Optional[int] = ..., subscription_id: _Optional[str] = ..., max_batch: _Optional[int] = ...) -> None: ...

class SubscribeResponse(_message.Message):
    __slots__ = ("subscription_id", "virtual_resource_info", "physical_resource_info", "last_sequence", "more")
    SUBSCRIPTION_ID_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_RESOURCE_INFO_FIELD_NUMBER: _ClassVar[int]
    PHYSICAL_RESOURCE_INFO_FIELD_NUMBER: _ClassVar[int]
    LAST_SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    MORE_FIELD_NUMBER: _ClassVar[int]
    subscription_id: str
    virtual_resource_info: _containers.RepeatedCompositeFieldContainer[_common_pb2.VirtualResourceInfo]
    physical_resource_info: _containers.RepeatedCompositeFieldContainer[_common_pb2.PhysicalResourceInfo]
    last_sequence: int
    more: bool
    def __init__(self, subscription_id: _Optional[str] = ..., virtual_resource_info: _Optional[_Iterable[_Union[_common_pb2.VirtualResourceInfo, _Mapping]]] = ..., physical_resource_info: _Optional[_Iterable[_Union[_common_pb2.PhysicalResourceInfo, _Mapping]]] = ..., last_sequence: _Optional[int] = ..., more: _Optional[bool] = ...) -> None: ...

class FaultNotification(_message.Message):
    __slots__ = ("notification_id", "sequence", "event_time_unix_nanos", "virtual_resource_info", "physical_resource_info", "timeline", "fenced", "fencing_error", "phase", "maintenance")
    NOTIFICATION_ID_FIELD_NUMBER: _ClassVar[int]
    SEQUENCE_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_RESOURCE_INFO_FIELD_NUMBER: _ClassVar[int]
    PHYSICAL_RESOURCE_INFO_FIELD_NUMBER: _ClassVar[int]
    TIMELINE_FIELD_NUMBER: _ClassVar[int]
    FENCED_FIELD_NUMBER: _ClassVar[int]
    FENCING_ERROR_FIELD_NUMBER: _ClassVar[int]
    PHASE_FIELD_NUMBER: _ClassVar[int]
    MAINTENANCE_FIELD_NUMBER: _ClassVar[int]
    notification_id: str
    sequence: int
    event_time_unix_nanos: int
    virtual_resource_info: _containers.RepeatedCompositeFieldContainer[_common_pb2.VirtualResourceInfo]
    physical_resource_info: _containers.RepeatedCompositeFieldContainer[_common_pb2.PhysicalResourceInfo]
    timeline: _common_pb2.Timeline
    fenced: bool
    fencing_error: str
    phase: IncidentPhase
    maintenance: _maintenance_pb2.MaintenanceNotification
    def __init__(self, notification_id: _Optional[str] = ..., sequence: _Optional[int] = ..., event_time_unix_nanos: _Optional[int] = ..., virtual_resource_info: _Optional[_Iterable[_Union[_common_pb2.VirtualResourceInfo, _Mapping]]] = ..., physical_resource_info: _Optional[_Iterable[_Union[_common_pb2.PhysicalResourceInfo, _Mapping]]] = ..., timeline: _Optional[_Union[_common_pb2.Timeline, _Mapping]] = ..., fenced: _Optional[bool] = ..., fencing_error: _Optional[str] = ..., phase: _Optional[_Union[IncidentPhase, str]] = ..., maintenance: _Optional[_Union[_maintenance_pb2.MaintenanceNotification, _Mapping]] = ...) -> None: ...

class SubscribeStreamMessage(_message.Message):
    __slots__ = ("subscribed", "fault", "maintenance", "batch")
    SUBSCRIBED_FIELD_NUMBER: _ClassVar[int]
    FAULT_FIELD_NUMBER: _ClassVar[int]
    MAINTENANCE_FIELD_NUMBER: _ClassVar[int]
    BATCH_FIELD_NUMBER: _ClassVar[int]
    subscribed: SubscribeResponse
    fault: FaultNotification
    maintenance: _maintenance_pb2.MaintenanceNotification
    batch: NotificationBatch
    def __init__(self, subscribed: _Optional[_Union[SubscribeResponse, _Mapping]] = ..., fault: _Optional[_Union[FaultNotification, _Mapping]] = ..., maintenance: _Optional[_Union[_maintenance_pb2.MaintenanceNotification, _Mapping]] = ..., batch: _Optional[_Union[NotificationBatch, _Mapping]] = ...) -> None: ...

class NotificationBatch(_message.Message):
    __slots__ = ("messages",)
    MESSAGES_FIELD_NUMBER: _ClassVar[int]
    messages: _containers.RepeatedCompositeFieldContainer[SubscribeStreamMessage]
    def __init__(self, messages: _Optional[_Iterable[_Union[SubscribeStreamMessage, _Mapping]]] = ...) -> None: ...

class FaultQueryFilter(_message.Message):
    __slots__ = ("virtual_resource_type", "virtual_resource_id", "fault_type", "min_severity", "event_start_unix_nanos", "event_end_unix_nanos", "fault_id")
    VIRTUAL_RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    FAULT_TYPE_FIELD_NUMBER: _ClassVar[int]
    MIN_SEVERITY_FIELD_NUMBER: _ClassVar[int]
    EVENT_START_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    EVENT_END_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    FAULT_ID_FIELD_NUMBER: _ClassVar[int]
    virtual_resource_type: _containers.RepeatedScalarFieldContainer[str]
    virtual_resource_id: _containers.RepeatedScalarFieldContainer[str]
    fault_type: _containers.RepeatedScalarFieldContainer[str]
    min_severity: _common_pb2.Severity
    event_start_unix_nanos: int
    event_end_unix_nanos: int
    fault_id: str
    def __init__(self, virtual_resource_type: _Optional[_Iterable[str]] = ..., virtual_resource_id: _Optional[_Iterable[str]] = ..., fault_type: _Optional[_Iterable[str]] = ..., min_severity: _Optional[_Union[_common_pb2.Severity, str]] = ..., event_start_unix_nanos: _Optional[int] = ..., event_end_unix_nanos: _Optional[int] = ..., fault_id: _Optional[str] = ...) -> None: ...

class FaultQueryRequest(_message.Message):
    __slots__ = ("filter",)
    FILTER_FIELD_NUMBER: _ClassVar[int]
    filter: FaultQueryFilter
    def __init__(self, filter: _Optional[_Union[FaultQueryFilter, _Mapping]] = ...) -> None: ...

class FaultQueryResponse(_message.Message):
    __slots__ = ("virtual_resource_info", "physical_resource_info")
    VIRTUAL_RESOURCE_INFO_FIELD_NUMBER: _ClassVar[int]
    PHYSICAL_RESOURCE_INFO_FIELD_NUMBER: _ClassVar[int]
    virtual_resource_info: _containers.RepeatedCompositeFieldContainer[_common_pb2.VirtualResourceInfo]
    physical_resource_info: _containers.RepeatedCompositeFieldContainer[_common_pb2.PhysicalResourceInfo]
    def __init__(self, virtual_resource_info: _Optional[_Iterable[_Union[_common_pb2.VirtualResourceInfo, _Mapping]]] = ..., physical_resource_info: _Optional[_Iterable[_Union[_common_pb2.PhysicalResourceInfo, _Mapping]]] = ...) -> None: ...

class ServerHostStatusRequest(_message.Message):
    __slots__ = ("server_id",)
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    server_id: str
    def __init__(self, server_id: _Optional[str] = ...) -> None: ...

class ServerHostStatusResponse(_message.Message):
    __slots__ = ("server_id", "host", "host_status")
    SERVER_ID_FIELD_NUMBER: _ClassVar[int]
    HOST_FIELD_NUMBER: _ClassVar[int]
    HOST_STATUS_FIELD_NUMBER: _ClassVar[int]
    server_id: str
    host: str
    host_status: _common_pb2.HostStatus
    def __init__(self, server_id: _Optional[str] = ..., host: _Optional[str] = ..., host_status: _Optional[_Union[_common_pb2.HostStatus, str]] = ...) -> None: ...
