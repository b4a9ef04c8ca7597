"""The two ways a pass moves data (kept apart from the engine so the CLI can name them without loading it).

``direct``: the primary pushes to the standby with the pair key. ``relay``: the controller pulls from the
primary, then pushes to the standby, for hosts that cannot reach each other.
"""

from __future__ import annotations

DIRECT, RELAY = "direct", "relay"
