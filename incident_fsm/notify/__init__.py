"""Telling people: notification policy, outbox dispatcher, channels and the PAM relay."""
