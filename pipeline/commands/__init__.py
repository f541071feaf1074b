"""The commands, each a thin composition of the library: validate -> tracked run -> fit -> evaluate -> export. None
imports another; the CLI hands ``tune`` and ``anomaly`` the pretraining job their trials run."""
