"""Names that other systems see: MLflow experiments, registered models and their aliases.

Consumers load `models:/attention-ranker@champion`; the gate moves `champion`, train sets
`challenger`, promote keeps the replaced version as `previous`. Defined here once.
"""

RANKER_MODEL = "attention-ranker"
ALS_MODEL = "als-candidates"

CHAMPION = "champion"
CHALLENGER = "challenger"
PREVIOUS = "previous"

ETL_EXPERIMENT = "recpipe-etl"
ALS_EXPERIMENT = "recpipe-als"
RANKER_EXPERIMENT = "recpipe-ranker"
NIGHTLY_EXPERIMENT = "recpipe-nightly"  # one run per nightly date: each stage's seconds and status
QUALITY_EXPERIMENT = "recpipe-ranker-quality"  # the report's multi-seed comparisons of the two networks
