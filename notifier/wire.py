"""Notifications as they go on the wire: the Subscribe stream's message, serialized once per view.

A notification a thousand subscribers of one project may see is viewed once
for them (``filters.view_notification``), turned into its stream message and
serialized once here; each of their streams is handed the same bytes
(``Delivery``), which the Subscribe handler writes as they are (the method's
serializer passes bytes through, ``server.add_fault_management``).

Several deliveries already queued for one consumer that accepts batches
(``SubscribeRequest.max_batch``) go as one ``NotificationBatch``, built by
concatenating their bytes behind protobuf's length prefixes: nothing is
parsed or serialized again.
"""

from __future__ import annotations

from collections.abc import Sequence
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


# protobuf tags (field number << 3 | length-delimited): NotificationBatch.messages, SubscribeStreamMessage.batch
_ITEM_TAG, _BATCH_TAG = b"\x0a", b"\x22"
MAX_BATCH = 1000              # a consumer asking for more gets this many at most
MAX_BATCH_BYTES = 1 << 20     # well under gRPC's 4 MiB default receive limit
ITEM_OVERHEAD = 8             # a message's tag and length prefix in a batch, at most


def _varint(n: int) -> bytes:
    out = bytearray()
    while n > 0x7F:
        out.append((n & 0x7F) | 0x80)
        n >>= 7
    out.append(n)
    return bytes(out)


def batch_length(items: Sequence[Delivery], start: int, max_batch: int) -> int:
    """How many of ``items`` from ``start`` (at least one) the next stream message carries: at most
    ``max_batch``, and within MAX_BATCH_BYTES (a single larger one goes alone)."""
    n, size = 1, len(items[start].data)
    while (n < max_batch and start + n < len(items)
           and size + len(items[start + n].data) + ITEM_OVERHEAD <= MAX_BATCH_BYTES):
        size += len(items[start + n].data) + ITEM_OVERHEAD
        n += 1
    return n


def batch(items: Sequence[Delivery]) -> bytes:
    """One SubscribeStreamMessage(batch=...) holding these deliveries' messages, in order."""
    body = b"".join(_ITEM_TAG + _varint(len(d.data)) + d.data for d in items)
    return _BATCH_TAG + _varint(len(body)) + body


def encode(message: bytes | fault_pb2.SubscribeStreamMessage) -> bytes:
    """Subscribe's response serializer: a Delivery's bytes as they are, a message (a snapshot part) serialized."""
    return message if isinstance(message, bytes) else message.SerializeToString()
