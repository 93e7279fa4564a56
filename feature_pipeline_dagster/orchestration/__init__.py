"""The Dagster layer: it only wires the core (definitions, resources, partitions, assets, the IO manager, checks, sensors, run logs)."""
