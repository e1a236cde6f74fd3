"""The node core: the node an application embeds, and its parts.

``Node`` composes the layers below it: the hub (its connections), the router (where pushes
go), the cluster layer, the frame dispatcher with the built-in events, server-to-client
requests, authentication and statistics.
"""

from ._access import Access as Access
from ._auth import OPERATOR_CLAIM as OPERATOR_CLAIM
from ._auth import AuthError as AuthError
from ._auth import Identity as Identity
from ._auth import check_secret as check_secret
from ._auth import mint_token as mint_token
from ._builtins import BUILTIN_EVENTS as BUILTIN_EVENTS
from ._node import Context as Context
from ._node import Node as Node
from ._stats import Stats as Stats
