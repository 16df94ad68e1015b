"""Background loops: the operation worker now; reconcilers and the scheduler later."""
