"""Hyperparameter searches with Ray Tune: what a search varies and how it judges trials (``space``), and the search
run that commands compose: its tracked run, its trials, the best of them and the record (``runner``)."""
