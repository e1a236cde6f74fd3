"""The cluster layer: bus, membership and presence view, cross-node routing and calls."""
