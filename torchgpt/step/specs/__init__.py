"""One module per registered model (model.name): each defines SPEC = TrainSpec(...)."""
