"""Job specs, the ``unidiffuser-batch`` CLI, submission and scheduling."""
