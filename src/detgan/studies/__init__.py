"""The paper studies end to end: footprint generation, refinement, calorimeter showers."""
