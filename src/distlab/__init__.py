"""distlab: reference implementations of distributed primitives, and the harness that breaks them.

Each system is a sans-I/O core (``core`` modules and the pure parts of ``distlab.common``) wrapped
in thin gRPC and asyncio shells. See README.md for the tour.
"""

__version__ = "0.1.0"
