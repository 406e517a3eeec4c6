"""``nova ui``: a local web dashboard over run directories, and a safe way to launch training from it.

Needs the optional extra ``nova-tune[ui]`` (starlette, uvicorn); only ``nova ui`` imports this
package, so ``nova --help`` and every other command stay as fast as before.
"""
