"""What a run reports: summary and status table, the HTML report, the runs index, the progress line."""
