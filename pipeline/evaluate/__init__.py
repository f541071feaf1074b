"""Evaluation of a frozen encoder on the shard streams (no augmentation), as a run's evaluation plan says
(``evaluation_plan``; nothing here reads the job config): linear probe (``probe``), kNN (``knn``), features
(``features``), baselines, plots. Import the module you need: the package imports nothing, so a Ray Train
worker that runs the online kNN does not pay scikit-learn's import (~1.7 s)."""
