"""Pure readers of a finished study and its runs: the summary of the search, and the
confirmed comparison with its paired statistics. Nothing here launches or writes."""
