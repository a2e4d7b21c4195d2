"""The ``chatrex`` command line: ``main.py`` builds the parser and runs a command; each
command family registers its own subparser (``convert.py``, ``detect_many.py``)."""
