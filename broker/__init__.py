"""The roomd broker: an XSUB/XPUB forwarder (``zmq.proxy_steerable``) with statistics.

Run it with ``roomd-broker`` or ``python -m broker``; embed it with :class:`Broker`; read a running
broker's counters with :func:`broker_stats`. See docs/zmq.md.
"""

from ._broker import DEFAULT_HWM as DEFAULT_HWM
from ._broker import Broker as Broker
from ._broker import BrokerEndpoints as BrokerEndpoints
from ._config import BrokerSettings as BrokerSettings
from ._config import ConfigError as ConfigError
from ._config import default_keys as default_keys
from ._config import parse_settings as parse_settings
from ._curve import BrokerKeys as BrokerKeys
from ._curve import KeyFileError as KeyFileError
from ._curve import load_broker_keys as load_broker_keys
from ._stats import AuthStats as AuthStats
from ._stats import BrokerStats as BrokerStats
from ._stats import SocketStats as SocketStats
from ._stats import broker_stats as broker_stats
