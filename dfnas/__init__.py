"""dfnas: data-free neural architecture search via recursive label calibration.

Every workflow stage is a small module runnable as ``python -m dfnas.<stage>``.
"""

__version__ = "0.1.0"
