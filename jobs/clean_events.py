"""spark-submit entry for the clean stage, through the runner (lock, skip, marker).

    spark-submit --py-files dist/recpipe-*.whl jobs/clean_events.py --conf conf/local.yaml --date D
"""

import sys

from recpipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["clean", *sys.argv[1:]]))
