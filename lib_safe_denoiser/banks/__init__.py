"""Negation banks as managed data: the on-disk store, its inputs, image decoding and the encoding pipeline.

Banks are named sets of images; their latents are cached per (content, VAE, latent size). Nothing
here imports the WebUI: the encoder is a callable the front-end hands in.
"""
