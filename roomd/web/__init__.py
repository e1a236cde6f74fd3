"""The browser side of roomd: ``roomd.js`` (the client for browsers and Node.js), its TypeScript
declarations, and the chat app, all served by every node (see :func:`web_routes`)."""

from ._static import StaticFile as StaticFile
from ._static import web_routes as web_routes
