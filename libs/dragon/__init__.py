"""DRAGON: proactive fault tolerance for federations of small edge devices.

The package is shared by every service; each service's entry point is a thin
``cli`` module in its own sub-package (``dragon.collector``, ``dragon.detector``).
Importing ``dragon`` has no side effects and pulls in no heavy dependency.
"""

__version__ = "0.1.0"
