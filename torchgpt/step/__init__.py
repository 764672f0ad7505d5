"""The training step, below everything that sizes or drives it: its one description
(config.TrainModuleConfig), the registered model and optimizer specs (spec), and the
TrainModule that runs forward/backward, clipping and the update (train_module)."""
