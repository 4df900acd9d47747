"""Engine execution and cache management."""
