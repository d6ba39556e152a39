"""A minimal stand-in for the WebUI's ``modules`` package (v1.10.1, commit 82a973c0).

Only what the extension's glue touches, with the real signatures and the real call order of
``CFGDenoiser.forward``; behaviour the glue does not see is left out, not faked.
"""
