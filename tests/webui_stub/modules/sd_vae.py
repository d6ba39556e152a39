"""modules/sd_vae.py: the file of the VAE loaded beside the checkpoint (None: the checkpoint's own)."""

loaded_vae_file = None
