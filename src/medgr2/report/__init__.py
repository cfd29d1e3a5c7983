"""Reports read back from MLflow: the paper's tables and figures (``python -m medgr2.report``, the one CLI).

- :mod:`medgr2.report.mlflow_runs`: finished runs and their ``predictions.jsonl`` read from an MLflow store;
- :mod:`medgr2.report.run_rows`: what one run row says (tags, metrics, seed, sweep keys), the ``attrs`` contract;
- :mod:`medgr2.report.cells`: which runs fill one table cell (seeds, latest run of a seed, sweep setting, label);
- :mod:`medgr2.report.tables`: Tables 1 and 2 and the per-question-type ``qtype_table``;
- :mod:`medgr2.report.figure_data`: the data of Figures 2, 4 and 5 (``fig2_points``, ``transfer_matrix``,
  ``transitions``);
- :mod:`medgr2.report.picking`: the runs Figure 5 compares (a named run, or a recipe's best);
- :mod:`medgr2.report.render`: Markdown, LaTeX and CSV renderers;
- :mod:`medgr2.report.figures`: matplotlib figures (no pyplot);
- :mod:`medgr2.report.significance`: pure statistics (bootstrap, McNemar, seed + question intervals, verdicts);
- :mod:`medgr2.report.aggregate`: seeds of one row as one cell (per-question correctness, mean ± 95% CI);
- :mod:`medgr2.report.claims`: paired comparisons of two arms and the paper's claims table;
- :mod:`medgr2.report.protocol`: the scoring protocol of each run, and rescoring saved predictions;
- :mod:`medgr2.report.build`: ``build_report``, each section's files; :mod:`medgr2.report.report_md`: ``report.md``;
- :mod:`medgr2.report.cli`: the command line's arguments and dispatch.

Nothing is imported here, so importing one module loads only what that module needs.
"""
