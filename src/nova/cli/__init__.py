"""The command line: thin commands that parse, call one library function, and map the result to an exit code."""
