"""roomd: a Trio WebSocket room server that scales out over ZeroMQ."""

from ._config import Config as Config
from ._config import ConfigError as ConfigError
from ._config import load_config as load_config
from ._version import __version__ as __version__
from .node import Access as Access
from .node import Context as Context
from .node import Node as Node
from .protocol import AckError as AckError
from .protocol import CloseCode as CloseCode
from .protocol import HandlerError as HandlerError
from .protocol import RequestTimeout as RequestTimeout
