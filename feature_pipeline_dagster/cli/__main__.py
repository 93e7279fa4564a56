import sys

from feature_pipeline_dagster.cli import main

sys.exit(main())
