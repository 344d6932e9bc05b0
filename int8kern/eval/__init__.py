"""Model-level evaluation of int8kern, kept apart from the core (ops, nn) and the
integrations (hf): nothing in the core imports it.

    run.py     python -m int8kern.eval: quality, memory and speed against float and naive int8
    report.py  tables, JSON and plots of a run
    naive.py   the plain-PyTorch quantizers int8kern is measured against
    models.py  the real models (from PyPI packages) and the real text, offline
"""
