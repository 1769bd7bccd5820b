"""The bad-input corpus of tests/test_bad_input_corpus.py: its machinery (``world``) and its cases,
one module per kind of command (importing a module registers its cases)."""
