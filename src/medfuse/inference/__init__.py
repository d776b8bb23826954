"""The torch side of prediction: loading a package with its model, inference helpers and the
torch predictor."""
