from google.protobuf.internal import containers as _containers
from google.protobuf.internal import enum_type_wrapper as _enum_type_wrapper
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class Severity(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    SEVERITY_UNSPECIFIED: _ClassVar[Severity]
    SEVERITY_CLEARED: _ClassVar[Severity]
    SEVERITY_INDETERMINATE: _ClassVar[Severity]
    SEVERITY_WARNING: _ClassVar[Severity]
    SEVERITY_MINOR: _ClassVar[Severity]
    SEVERITY_MAJOR: _ClassVar[Severity]
    SEVERITY_CRITICAL: _ClassVar[Severity]

class AlarmState(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    ALARM_STATE_UNSPECIFIED: _ClassVar[AlarmState]
    ALARM_STATE_FIRED: _ClassVar[AlarmState]
    ALARM_STATE_UPDATED: _ClassVar[AlarmState]
    ALARM_STATE_CLEARED: _ClassVar[AlarmState]

class HostStatus(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    HOST_STATUS_UNSPECIFIED: _ClassVar[HostStatus]
    HOST_STATUS_UP: _ClassVar[HostStatus]
    HOST_STATUS_UNKNOWN: _ClassVar[HostStatus]
    HOST_STATUS_DOWN: _ClassVar[HostStatus]
    HOST_STATUS_MAINTENANCE: _ClassVar[HostStatus]

class Stage(int, metaclass=_enum_type_wrapper.EnumTypeWrapper):
    __slots__ = ()
    STAGE_UNSPECIFIED: _ClassVar[Stage]
    STAGE_OBSERVED: _ClassVar[Stage]
    STAGE_SENT: _ClassVar[Stage]
    STAGE_RECEIVED: _ClassVar[Stage]
    STAGE_CORRELATED: _ClassVar[Stage]
    STAGE_FENCED: _ClassVar[Stage]
    STAGE_MARKED_DOWN: _ClassVar[Stage]
    STAGE_SERVERS_UPDATED: _ClassVar[Stage]
    STAGE_PUBLISHED: _ClassVar[Stage]
    STAGE_DELIVERED: _ClassVar[Stage]
    STAGE_SUSPECT_PUBLISHED: _ClassVar[Stage]
    STAGE_FENCE_PUBLISHED: _ClassVar[Stage]
SEVERITY_UNSPECIFIED: Severity
SEVERITY_CLEARED: Severity
SEVERITY_INDETERMINATE: Severity
SEVERITY_WARNING: Severity
SEVERITY_MINOR: Severity
SEVERITY_MAJOR: Severity
SEVERITY_CRITICAL: Severity
ALARM_STATE_UNSPECIFIED: AlarmState
ALARM_STATE_FIRED: AlarmState
ALARM_STATE_UPDATED: AlarmState
ALARM_STATE_CLEARED: AlarmState
HOST_STATUS_UNSPECIFIED: HostStatus
HOST_STATUS_UP: HostStatus
HOST_STATUS_UNKNOWN: HostStatus
HOST_STATUS_DOWN: HostStatus
HOST_STATUS_MAINTENANCE: HostStatus
STAGE_UNSPECIFIED: Stage
STAGE_OBSERVED: Stage
STAGE_SENT: Stage
STAGE_RECEIVED: Stage
STAGE_CORRELATED: Stage
STAGE_FENCED: Stage
STAGE_MARKED_DOWN: Stage
STAGE_SERVERS_UPDATED: Stage
STAGE_PUBLISHED: Stage
STAGE_DELIVERED: Stage
STAGE_SUSPECT_PUBLISHED: Stage
STAGE_FENCE_PUBLISHED: Stage

class StageTime(_message.Message):
    __slots__ = ("stage", "unix_nanos")
    STAGE_FIELD_NUMBER: _ClassVar[int]
    UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    stage: Stage
    unix_nanos: int
    def __init__(self, stage: _Optional[_Union[Stage, str]] = ..., unix_nanos: _Optional[int] = ...) -> None: ...

class Timeline(_message.Message):
    __slots__ = ("stamps",)
    STAMPS_FIELD_NUMBER: _ClassVar[int]
    stamps: _containers.RepeatedCompositeFieldContainer[StageTime]
    def __init__(self, stamps: _Optional[_Iterable[_Union[StageTime, _Mapping]]] = ...) -> None: ...

class Fault(_message.Message):
    __slots__ = ("fault_id", "fault_type", "severity", "event_time_unix_nanos", "probable_cause", "correlated_fault_ids", "is_root_cause", "fault_details", "state", "raised_time_unix_nanos", "changed_time_unix_nanos", "cleared_time_unix_nanos", "managed_object_id", "root_cause_resource_id")
    class FaultDetailsEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    FAULT_ID_FIELD_NUMBER: _ClassVar[int]
    FAULT_TYPE_FIELD_NUMBER: _ClassVar[int]
    SEVERITY_FIELD_NUMBER: _ClassVar[int]
    EVENT_TIME_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    PROBABLE_CAUSE_FIELD_NUMBER: _ClassVar[int]
    CORRELATED_FAULT_IDS_FIELD_NUMBER: _ClassVar[int]
    IS_ROOT_CAUSE_FIELD_NUMBER: _ClassVar[int]
    FAULT_DETAILS_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    RAISED_TIME_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    CHANGED_TIME_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    CLEARED_TIME_UNIX_NANOS_FIELD_NUMBER: _ClassVar[int]
    MANAGED_OBJECT_ID_FIELD_NUMBER: _ClassVar[int]
    ROOT_CAUSE_RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    fault_id: str
    fault_type: str
    severity: Severity
    event_time_unix_nanos: int
    probable_cause: str
    correlated_fault_ids: _containers.RepeatedScalarFieldContainer[str]
    is_root_cause: bool
    fault_details: _containers.ScalarMap[str, str]
    state: AlarmState
    raised_time_unix_nanos: int
    changed_time_unix_nanos: int
    cleared_time_unix_nanos: int
    managed_object_id: str
    root_cause_resource_id: str
    def __init__(self, fault_id: _Optional[str] = ..., fault_type: _Optional[str] = ..., severity: _Optional[_Union[Severity, str]] = ..., event_time_unix_nanos: _Optional[int] = ..., probable_cause: _Optional[str] = ..., correlated_fault_ids: _Optional[_Iterable[str]] = ..., is_root_cause: _Optional[bool] = ..., fault_details: _Optional[_Mapping[str, str]] = ..., state: _Optional[_Union[AlarmState, str]] = ..., raised_time_unix_nanos: _Optional[int] = ..., changed_time_unix_nanos: _Optional[int] = ..., cleared_time_unix_nanos: _Optional[int] = ..., managed_object_id: _Optional[str] = ..., root_cause_resource_id: _Optional[str] = ...) -> None: ...

class VirtualResourceInfo(_message.Message):
    __slots__ = ("virtual_resource_id", "virtual_resource_type", "virtual_resource_state", "project_id", "physical_resource_id", "faults", "host_status")
    VIRTUAL_RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_RESOURCE_TYPE_FIELD_NUMBER: _ClassVar[int]
    VIRTUAL_RESOURCE_STATE_FIELD_NUMBER: _ClassVar[int]
    PROJECT_ID_FIELD_NUMBER: _ClassVar[int]
    PHYSICAL_RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    FAULTS_FIELD_NUMBER: _ClassVar[int]
    HOST_STATUS_FIELD_NUMBER: _ClassVar[int]
    virtual_resource_id: str
    virtual_resource_type: str
    virtual_resource_state: str
    project_id: str
    physical_resource_id: str
    faults: _containers.RepeatedCompositeFieldContainer[Fault]
    host_status: HostStatus
    def __init__(self, virtual_resource_id: _Optional[str] = ..., virtual_resource_type: _Optional[str] = ..., virtual_resource_state: _Optional[str] = ..., project_id: _Optional[str] = ..., physical_resource_id: _Optional[str] = ..., faults: _Optional[_Iterable[_Union[Fault, _Mapping]]] = ..., host_status: _Optional[_Union[HostStatus, str]] = ...) -> None: ...

class PhysicalResourceInfo(_message.Message):
    __slots__ = ("physical_resource_id", "physical_resource_state", "zone_id", "metadata", "faults", "host_status")
    class MetadataEntry(_message.Message):
        __slots__ = ("key", "value")
        KEY_FIELD_NUMBER: _ClassVar[int]
        VALUE_FIELD_NUMBER: _ClassVar[int]
        key: str
        value: str
        def __init__(self, key: _Optional[str] = ..., value: _Optional[str] = ...) -> None: ...
    PHYSICAL_RESOURCE_ID_FIELD_NUMBER: _ClassVar[int]
    PHYSICAL_RESOURCE_STATE_FIELD_NUMBER: _ClassVar[int]
    ZONE_ID_FIELD_NUMBER: _ClassVar[int]
    METADATA_FIELD_NUMBER: _ClassVar[int]
    FAULTS_FIELD_NUMBER: _ClassVar[int]
    HOST_STATUS_FIELD_NUMBER: _ClassVar[int]
    physical_resource_id: str
    physical_resource_state: str
    zone_id: str
    metadata: _containers.ScalarMap[str, str]
    faults: _containers.RepeatedCompositeFieldContainer[Fault]
    host_status: HostStatus
    def __init__(self, physical_resource_id: _Optional[str] = ..., physical_resource_state: _Optional[str] = ..., zone_id: _Optional[str] = ..., metadata: _Optional[_Mapping[str, str]] = ..., faults: _Optional[_Iterable[_Union[Fault, _Mapping]]] = ..., host_status: _Optional[_Union[HostStatus, str]] = ...) -> None: ...
