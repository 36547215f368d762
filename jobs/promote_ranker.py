"""spark-submit entry for the champion/challenger gate, through the runner (lock, skip, marker).

    spark-submit --py-files dist/recpipe-*.whl jobs/promote_ranker.py --conf conf/local.yaml --date D
"""

import sys

from recpipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["promote", *sys.argv[1:]]))
