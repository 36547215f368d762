"""spark-submit entry for the ALS stage, through the runner (lock, skip, marker).

    spark-submit --py-files dist/recpipe-*.whl jobs/train_als.py --conf conf/local.yaml --date D
"""

import sys

from recpipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["als", *sys.argv[1:]]))
