"""Pure-Python core: recipe model, YAML, donors, plan, validation, estimator. No Qt, no torch."""
