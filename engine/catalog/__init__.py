"""The catalog: `models.yaml` read into frozen configs, the registry of loaded models, memory budgets."""
