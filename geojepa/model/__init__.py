"""The GeoJEPA model: tokeniser, masks, encoders, predictor and training module."""
