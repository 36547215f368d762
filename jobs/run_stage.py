"""spark-submit entry for any declared stage, through the runner (lock, skip, marker).

    spark-submit --py-files dist/recpipe-*.whl jobs/run_stage.py --conf conf/local.yaml --stage clean --date D [--force]
"""

import sys

from recpipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["run-stage", *sys.argv[1:]]))
