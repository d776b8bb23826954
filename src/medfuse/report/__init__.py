"""Model card, clinical metrics with confidence intervals, plots and the HTML report."""
