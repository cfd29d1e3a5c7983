"""Reports read back from MLflow: the paper's tables and figures (``python -m medgr2.report``).

- :mod:`medgr2.report.tables`: load runs, pure table / figure-data functions (``table1``, ``table2``,
  ``fig2_points``, ``transfer_matrix``, ``transitions``) and the original ``qtype_table``;
- :mod:`medgr2.report.render`: Markdown, LaTeX and CSV renderers;
- :mod:`medgr2.report.figures`: matplotlib figures (no pyplot);
- :mod:`medgr2.report.significance`: pure statistics (bootstrap, McNemar, seed + question intervals, verdicts);
- :mod:`medgr2.report.aggregate`: seeds of one row as one cell (per-question correctness, mean ± 95% CI);
- :mod:`medgr2.report.claims`: paired comparisons of two arms and the paper's claims table;
- :mod:`medgr2.report.cli`: ``build_report`` and the command line.

Nothing is imported here, so ``python -m medgr2.report.tables`` runs without warnings.
"""
