"""The attention ranker's serving code: what a registered model ships and needs.

`layers/`, `model`, `scoring` and `pyfunc` travel with the registered MLflow model as the
top-level package `ranker` (`pyfunc_entry` is the models-from-code entry point), so they
use relative imports only and need torch, numpy, pandas and mlflow, never recpipe.
`consumer` builds the consumer's input frame from index-level arrays (the gate and the
training side's input example use it).
"""
