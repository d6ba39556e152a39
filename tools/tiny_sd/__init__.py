"""A small SD 1.x checkpoint that has learned the sklearn digits, to see the extension act through a real WebUI.

``python -m tools.tiny_sd.train --webui /path/to/stable-diffusion-webui`` trains it (see ``train.py``);
``tools.tiny_sd.read`` reads decoded 64x64 images back as digits with the demo's classifier.
"""
