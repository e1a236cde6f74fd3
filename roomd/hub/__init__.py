"""Local state of a node: connected clients, users and rooms, and fan-out."""

from ._client import Client as Client
from ._client import Outlet as Outlet
from ._client import RateLimiter as RateLimiter
from ._client import RoomKey as RoomKey
from ._hub import Hub as Hub
