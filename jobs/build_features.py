"""spark-submit entry for the features stage, through the runner (lock, skip, marker).

    spark-submit --py-files dist/recpipe-*.whl jobs/build_features.py --conf conf/local.yaml --date D
"""

import sys

from recpipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["features", *sys.argv[1:]]))
