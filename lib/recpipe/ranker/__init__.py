"""Training the attention ranker: `recpipe train --date D`.

`inputs` (Spark: samples + leak-free ALS scores → ranker_input), `data` (Petastorm
stream), `dist`, `trainer`, `checkpoints`, `launch` (torchrun entry), `evaluate`,
`report` (figures), `publish` (MLflow model), `stage` (the stage's `run`), `toy`
(synthetic inputs for tests and benchmarks). The network itself is in `recpipe.serving`.
"""
