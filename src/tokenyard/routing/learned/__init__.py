"""The learned difficulty classifier: features, the artifact the router loads, training.

:mod:`.features` and :mod:`.model` need numpy only and are what the router runs;
:mod:`.train` (scikit-learn) and :mod:`.cli` (``tokenyard train-router``) are never
imported by the router.
"""
