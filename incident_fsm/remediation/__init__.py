"""Fixing problems: the action policy, the learned ranking, the remediator and the actions."""
