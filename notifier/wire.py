"""Notifications as they go on the wire: the Subscribe stream's message, serialized once per view.

A notification a thousand subscribers of one project may see is viewed once
for them (``filters.view_notification``), turned into its stream message and
serialized once here; each of their streams is handed the same bytes
(``Delivery``), which the Subscribe handler writes as they are (the method's
serializer passes bytes through, ``server.add_fault_management``).
"""

from __future__ import annotations

from dataclasses import dataclass

from doctor_common.api import fault_pb2, maintenance_pb2


@dataclass(frozen=True, slots=True)
class Delivery:
    sequence: int
    data: bytes  # a serialized SubscribeStreamMessage


def maintenance_message(n: fault_pb2.FaultNotification) -> maintenance_pb2.MaintenanceNotification:
    """A maintenance entry of the log as the consumer receives it: the notice, with the envelope's sequence, id,
    time and (already filtered) resources."""
    out = maintenance_pb2.MaintenanceNotification()
    out.CopyFrom(n.maintenance)
    out.notification_id, out.sequence, out.event_time_unix_nanos = (n.notification_id, n.sequence,
                                                                    n.event_time_unix_nanos)
    out.virtual_resource_info.extend(n.virtual_resource_info)
    out.physical_resource_info.extend(n.physical_resource_info)
    return out


def stream_message(view: fault_pb2.FaultNotification) -> fault_pb2.SubscribeStreamMessage:
    if view.HasField("maintenance"):
        return fault_pb2.SubscribeStreamMessage(maintenance=maintenance_message(view))
    return fault_pb2.SubscribeStreamMessage(fault=view)


def delivery(view: fault_pb2.FaultNotification) -> Delivery:
    return Delivery(view.sequence, stream_message(view).SerializeToString())


def encode(message: bytes | fault_pb2.SubscribeStreamMessage) -> bytes:
    """Subscribe's response serializer: a Delivery's bytes as they are, a message (a snapshot part) serialized."""
    return message if isinstance(message, bytes) else message.SerializeToString()
