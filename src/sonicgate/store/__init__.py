"""Where sessions, connections, streaming contexts and history live."""
