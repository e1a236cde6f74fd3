"""The cluster layer: bus, membership and presence view, cross-node routing and calls.

It depends on the layers below (protocol, io, configuration) and on what its node hands it (a
:class:`ClusterHost` and plain values), never on the node itself.
"""

from __future__ import annotations

from .._config import ClusterSection
from ..io import Flusher
from ._bus import Bus as Bus
from ._calls import CallHandler as CallHandler
from ._calls import Calls as Calls
from ._calls import ClusterReplies as ClusterReplies
from ._calls import Replies as Replies
from ._calls import Reply as Reply
from ._cluster import BusFactory as BusFactory
from ._cluster import BusPort as BusPort
from ._cluster import Cluster as Cluster
from ._host import ClusterHost as ClusterHost
from ._host import ClusterLink as ClusterLink
from ._memory import MemoryBus as MemoryBus
from ._memory import MemoryNetwork as MemoryNetwork
from ._single import SingleNode as SingleNode
from ._streaming import CLOCK_SLACK as CLOCK_SLACK
from ._streaming import StreamService as StreamService
from ._streams import Entry as Entry
from ._streams import Gap as Gap
from ._streams import HistoryLimits as HistoryLimits
from ._streams import Position as Position
from ._streams import StreamKey as StreamKey
from ._streams import room_of as room_of
from ._streams import room_stream as room_stream
from ._streams import user_of as user_of
from ._streams import user_stream as user_stream
from ._streams import with_position as with_position
from ._view import ClusterView as ClusterView
from ._view import Delta as Delta
from ._view import Effect as Effect
from ._view import Joined as Joined
from ._view import Left as Left
from ._view import MemberJoined as MemberJoined
from ._view import MemberLeft as MemberLeft
from ._view import Online as Online
from ._view import Status as Status
from ._view import StatusChanged as StatusChanged
from ._view import UserOffline as UserOffline
from ._view import UserOnline as UserOnline


def make_cluster(
    name: str,
    epoch: int,
    *,
    view: ClusterView,
    section: ClusterSection,
    host: ClusterHost,
    flusher: Flusher,
    history: HistoryLimits,
    bus: BusFactory | None = None,
) -> ClusterLink:
    """The cluster layer for ``section.mode``: a :class:`Cluster`, or a :class:`SingleNode`."""
    if section.mode == "none":
        return SingleNode(name, view=view, host=host, timeout=section.call_timeout, history=history)
    return Cluster(
        name,
        epoch,
        view=view,
        section=section,
        host=host,
        flusher=flusher,
        history=history,
        bus=bus,
    )
