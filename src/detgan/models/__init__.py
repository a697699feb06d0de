"""Networks: generators, critics, regressors and refiners (per-event outputs, no losses)."""
