"""occ core: data formats, converters, metrics, models and engines for 3D semantic occupancy.

Importing :mod:`occ_core` is cheap: it imports neither torch nor any heavy module. Sub-packages
import what they need.
"""

__version__ = "0.1.0"
