"""The generation side: validated arguments, the per-job state, CFG row steering, infotext and the trace.

What the WebUI glue calls at each step of a job, written against plain tensors and callables so
it is tested without the WebUI.
"""
