"""The two-level controller: a LightGBM complexity predictor and an LSTM policy trained with PPO,
plus the baselines, all run on cached exits (edge_model.exits) without re-running the backbone."""
