"""A finished run as a predictor, and the inputs `tftune predict` reads."""
