"""Reference Monte Carlo simulators: air-shower arrays and e.m. calorimeter showers."""
