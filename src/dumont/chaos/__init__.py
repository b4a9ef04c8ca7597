"""Fault campaigns on the local cloud that check, at the end, that nothing was lost or torn (issue 14)."""
