"""popd: a privilege-separated POP3 server for Unix mbox spools.

The file list is the architecture; see README.md and DESIGN notes in the
module docstrings.  Every module says which process runs it.
"""
__version__ = "0.1.0"
