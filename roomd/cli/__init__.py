"""The ``roomd`` command: run a node, mint tokens, run a local cluster, chat, discover, bench."""

from ._chat import ChatSession as ChatSession
from ._chat import chat_main as chat_main
from ._main import main as main
