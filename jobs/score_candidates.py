"""spark-submit entry for batch scoring with the champion, through the runner (lock, skip, marker).

    spark-submit --py-files dist/recpipe-*.whl jobs/score_candidates.py --conf conf/local.yaml --date D
"""

import sys

from recpipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["score", *sys.argv[1:]]))
