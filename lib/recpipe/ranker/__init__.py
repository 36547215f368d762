"""The attention ranker: `recpipe train --date D`.

Model code (travels with the registered MLflow model as the package `ranker`; relative
imports only, nothing from recpipe outside this package): `layers/`, `model`, `scoring`,
`pyfunc` (and `pyfunc_entry`, the models-from-code entry point).

Training side: `inputs` (Spark: samples + leak-free ALS scores → ranker_input), `data`
(Petastorm and pyarrow readers), `dist`, `trainer`, `checkpoints`, `launch` (torchrun
entry), `metrics`, `evaluate`, `report` (figures), `publish` (MLflow model), `stage`
(the stage's `run`), `toy` (synthetic inputs for tests and benchmarks).
"""
