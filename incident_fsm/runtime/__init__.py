"""The running agent: agent, monitor, sweeper, leader election, heartbeat, start-up checks."""
