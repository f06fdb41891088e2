"""HTTP and WebSocket front door."""
