"""The standalone digits demo: a small EDM denoiser on the sklearn 8x8 digits, negating one digit.

``python -m lib_safe_denoiser demo`` (see ``run.py``); the weights in ``assets/`` are made by
``python -m lib_safe_denoiser.demo.train``. Nothing here is needed by the WebUI extension.
"""
