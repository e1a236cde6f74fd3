"""The Trio layer: HTTP and WebSocket on one port, and the ZeroMQ adapter."""
