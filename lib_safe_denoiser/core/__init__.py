"""The correction math: configuration, the safe denoiser, its streamed kernel and the noise schedules.

Pure torch, no files, no WebUI: everything here is a function of tensors and a config.
"""
