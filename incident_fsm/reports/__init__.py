"""Reading what happened: text and JSON reports and the read-only status endpoints."""
