"""Local state of a node: its connections, users and rooms, and fan-out to them. No I/O."""

from ._connection import Connection as Connection
from ._connection import Outlet as Outlet
from ._connection import RateLimiter as RateLimiter
from ._connection import RoomKey as RoomKey
from ._hub import Hub as Hub
