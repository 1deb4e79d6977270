"""The study: grids of cells × seeds trained at equal episode budgets, the support-size sweep at meta-test,
whitening diagnostics, and the statistics, table, plots and findings built from them (docs/study.md)."""
