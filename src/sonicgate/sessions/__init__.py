"""Session lifecycle: the StreamingContext state machine, chunk ordering, live sessions."""
