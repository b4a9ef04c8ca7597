"""Replication: primary workspace to standby snapshots, killable at any instant without damage."""
