"""The operator command line (`incident-fsm`)."""
