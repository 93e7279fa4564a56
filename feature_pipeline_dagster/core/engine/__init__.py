"""The embedding engine: a run's videos decoded, embedded and written, one failure policy."""
