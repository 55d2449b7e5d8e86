"""The Ray side of training: the Ray Train worker loop, the driver that builds and fits the TorchTrainer,
MLflow tracking from rank 0, and the final registration in the MLflow model registry."""
