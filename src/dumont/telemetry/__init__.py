"""Seeing the controller (SPEC §4.8): Prometheus metrics, notifications, and the live dashboard.

``metrics`` holds the table of every exported metric; ``sampler`` reads disks and prices in the background;
``notify`` turns events into throttled apprise notifications; ``http`` serves ``/metrics``, ``/api/telemetry`` and
the dashboard; ``wiring.Telemetry`` ties them to one controller.
"""

from dumont.telemetry.wiring import Telemetry

__all__ = ["Telemetry"]
