"""spark-submit entry for several stages over a range of days in one application.

    spark-submit --py-files dist/recpipe-*.whl jobs/run_pipeline.py --conf conf/local.yaml --start D1 --end D2 --stages clean,features
"""

import sys

from recpipe.cli import main

if __name__ == "__main__":
    sys.exit(main(["pipeline", *sys.argv[1:]]))
