"""The roomd client library (Trio): one server, several servers, discovery.

``open_client`` keeps one session with a node alive (reconnect with backoff, heartbeat, offline
queue, rooms re-joined); ``MultiServerClient`` holds several at once. See docs/client.md.
"""

from ..protocol import AckError as AckError
from ..protocol import RequestTimeout as RequestTimeout
from ._backoff import Backoff as Backoff
from ._backoff import Reconnect as Reconnect
from ._backoff import Stop as Stop
from ._backoff import decide as decide
from ._client import Client as Client
from ._client import ClientState as ClientState
from ._client import open_client as open_client
from ._core import ANY_PUSH as ANY_PUSH
from ._core import Closed as Closed
from ._core import EmitFailed as EmitFailed
from ._core import GaveUp as GaveUp
from ._core import Lifecycle as Lifecycle
from ._core import OfflineQueue as OfflineQueue
from ._core import Opened as Opened
from ._core import Pacer as Pacer
from ._core import PendingCalls as PendingCalls
from ._core import ProtocolProblem as ProtocolProblem
from ._core import Reconnecting as Reconnecting
from ._core import RoomSet as RoomSet
from ._core import Rtt as Rtt
from ._core import RttSample as RttSample
from ._core import client_url as client_url
from ._discovery import DEFAULT_DISCOVER_TIMEOUT as DEFAULT_DISCOVER_TIMEOUT
from ._discovery import DiscoveredNode as DiscoveredNode
from ._discovery import discover as discover
from ._errors import ClientClosed as ClientClosed
from ._errors import ClientError as ClientError
from ._errors import ConnectFailed as ConnectFailed
from ._errors import ConnectionLost as ConnectionLost
from ._errors import InvalidServer as InvalidServer
from ._errors import OfflineQueueFull as OfflineQueueFull
from ._health import Health as Health
from ._health import fetch_health as fetch_health
from ._multi import MultiEvent as MultiEvent
from ._multi import MultiServerClient as MultiServerClient
from ._multi import RoomId as RoomId
from ._multi import ServerChanged as ServerChanged
from ._multi import ServerInfo as ServerInfo
from ._multi import ServerPush as ServerPush
from ._multi import ServerStatus as ServerStatus
from ._multi import Switched as Switched
from ._multi import SyncApplied as SyncApplied
from ._multi import SyncOutcome as SyncOutcome
from ._multi import open_multi_client as open_multi_client
from ._subscription import Overflow as Overflow
from ._subscription import Subscription as Subscription
from ._subscription import SubscriptionOverflow as SubscriptionOverflow
