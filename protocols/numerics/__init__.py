"""Functions on secret shares: dealer comparisons, lookup tables, Newton/Goldschmidt iterations, the
model's nonlinear layers, top-k selection, range guards."""
