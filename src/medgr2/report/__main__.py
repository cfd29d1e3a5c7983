"""``python -m medgr2.report``: write tables, figures and ``report.md`` from MLflow (see :mod:`medgr2.report.cli`)."""

import sys

import matplotlib

matplotlib.use("Agg")

from medgr2.report.cli import main  # noqa: E402

sys.exit(main())
